//! Bet intake on `bets.place.<table>` (queue group `gs`): every request gets exactly one answer,
//! accepted with the new balance or rejected with a code — a malformed request included.
//!
//! Requests are handled concurrently up to [`MAX_CONCURRENT_BETS`] within this one task (no
//! task per request). Batching many bets into one transaction comes with issue 7.

use bus::Requests;
use futures_util::StreamExt;
use protocol::{Encoding, ErrorCode, PlaceBetReply, PlaceBetRequest};
use store::Store;
use tokio_util::sync::CancellationToken;

use crate::GsConfig;
use crate::ledger::{self, BetRequest, LedgerError};

/// Bets in progress at once per GS instance; each holds at most one pooled connection.
const MAX_CONCURRENT_BETS: usize = 32;

pub(crate) async fn run(
    requests: Requests,
    store: Store,
    config: GsConfig,
    shutdown: CancellationToken,
) {
    requests
        .take_until(shutdown.cancelled_owned())
        .for_each_concurrent(MAX_CONCURRENT_BETS, |request| {
            let store = store.clone();
            let config = config.clone();
            async move {
                let reply = answer(&store, &config, &request.payload).await;
                let payload = match Encoding::MsgPack.encode(&reply) {
                    Ok(payload) => payload,
                    Err(error) => {
                        tracing::error!(%error, "bet reply could not be encoded");
                        return;
                    }
                };
                if let Err(error) = request.respond(payload).await {
                    tracing::warn!(%error, "bet reply not delivered");
                }
            }
        })
        .await;
}

async fn answer(store: &Store, config: &GsConfig, payload: &[u8]) -> PlaceBetReply {
    let request: PlaceBetRequest = match Encoding::MsgPack.decode(payload) {
        Ok(request) => request,
        Err(error) => {
            metrics::counter!("gs_bets_rejected_total", "code" => "BAD_MESSAGE").increment(1);
            return PlaceBetReply::rejected(ErrorCode::BadMessage, error.to_string());
        }
    };
    let bet = BetRequest {
        bet_id: request.bet_id,
        player: request.player,
        table: request.table,
        round: request.round,
        selection: request.selection,
        amount: request.amount,
    };
    wait_for_round(store, config, &bet).await;
    match ledger::place_bet(store, &bet, &config.limits).await {
        Ok(balance) => {
            metrics::counter!("gs_bets_accepted_total").increment(1);
            PlaceBetReply::accepted(bet.bet_id, balance)
        }
        Err(LedgerError::Rejected { code, message }) => {
            metrics::counter!("gs_bets_rejected_total", "code" => code.as_str()).increment(1);
            PlaceBetReply::rejected(code, message)
        }
        Err(error) => {
            tracing::error!(%error, "bet could not be recorded");
            metrics::counter!("gs_bets_failed_total").increment(1);
            // The client may retry with the same bet_id: nothing was recorded.
            PlaceBetReply::rejected(
                ErrorCode::BettingUnavailable,
                "the bet could not be recorded; retry with the same bet_id",
            )
        }
    }
}

/// A bet may reach GS before GS has read the round's opening from the stream: wait a bounded
/// time for it before judging the bet, so it is not refused as `BETTING_CLOSED` unfairly.
async fn wait_for_round(store: &Store, config: &GsConfig, bet: &BetRequest) {
    let deadline = tokio::time::Instant::now() + config.catch_up_wait;
    loop {
        match ledger::betting_window(store, &bet.table, bet.round).await {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if tokio::time::Instant::now() >= deadline => return,
            Ok(None) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}
