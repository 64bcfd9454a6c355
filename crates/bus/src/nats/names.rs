//! The one place where `CROUPIER_NATS_PREFIX` is applied and removed: with prefix `p`, subject
//! `table.a.round` is `p.table.a.round` on the server, stream `TABLES` is `p_TABLES`, bucket
//! `gms_leases` is `p_gms_leases`, consumer `x` is `p_x`. An empty prefix changes nothing.

use crate::error::BusError;
use crate::subject::check_name;

#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Result<Self, BusError> {
        if !prefix.is_empty() {
            check_name("CROUPIER_NATS_PREFIX", prefix)?;
        }
        Ok(Self {
            prefix: prefix.to_string(),
        })
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The server subject (or filter) of a logical one.
    pub(crate) fn subject(&self, logical: &str) -> String {
        if self.prefix.is_empty() {
            logical.to_string()
        } else {
            format!("{}.{logical}", self.prefix)
        }
    }

    /// The logical subject of a server one.
    pub(crate) fn logical_subject(&self, real: &str) -> String {
        if self.prefix.is_empty() {
            return real.to_string();
        }
        real.strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or(real)
            .to_string()
    }

    /// The server name of a stream, consumer or bucket.
    pub(crate) fn name(&self, logical: &str) -> String {
        if self.prefix.is_empty() {
            logical.to_string()
        } else {
            format!("{}_{logical}", self.prefix)
        }
    }

    /// The logical name of a server stream, consumer or bucket.
    pub(crate) fn logical_name(&self, real: &str) -> String {
        if self.prefix.is_empty() {
            return real.to_string();
        }
        real.strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix('_'))
            .unwrap_or(real)
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_namespaces_subjects_and_names_and_is_removed_on_the_way_back() {
        let names = Names::new("p").expect("valid prefix");
        assert_eq!(names.subject("table.a.round"), "p.table.a.round");
        assert_eq!(names.subject("table.>"), "p.table.>");
        assert_eq!(names.logical_subject("p.table.a.round"), "table.a.round");
        assert_eq!(names.name("TABLES"), "p_TABLES");
        assert_eq!(names.logical_name("p_TABLES"), "TABLES");
    }

    #[test]
    fn an_empty_prefix_leaves_names_unchanged() {
        let names = Names::new("").expect("empty prefix");
        assert_eq!(names.subject("table.a.round"), "table.a.round");
        assert_eq!(names.name("gms_leases"), "gms_leases");
        assert_eq!(names.logical_subject("table.a.round"), "table.a.round");
    }

    #[test]
    fn a_prefix_that_is_not_a_single_token_is_refused() {
        assert!(Names::new("a.b").is_err());
        assert!(Names::new("a b").is_err());
        assert!(Names::new("t0123456789ab").is_ok());
    }
}
