//! `query_cost`: what one query page costs on the ledger thread (`api::answer`: the walk and
//! the copies, no JSON) and on the worker (`api::render`), at 1M transfers. Figures only;
//! docs/ledger.md ("Query cost") records a run.
//!
//! ```text
//! cargo run --release -p bench --bin query_cost
//! ```
#![forbid(unsafe_code)]

use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use ledger_svc::api::{self, Action, Role, QUERY_SCAN_ROWS_MAX};
use ledger_svc::http::{Method, Request, Version};
use ledger_svc::*;

const ACCOUNTS: u128 = 10_000;
const TRANSFERS: u64 = 1_000_000;
const ROUNDS: usize = 200;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 10,000 accounts (every tenth with `history`), 1M transfers between pseudo-random pairs with
/// codes 1..=100 and user_data_128 0..1000; account 1 is on one transfer in 40 (25,000), so a
/// filtered walk over its transfers can spend the whole scan budget.
fn state() -> Result<StateMachine> {
    let mut sm = StateMachine::with_capacity(ACCOUNTS as usize, TRANSFERS as usize);
    let accounts: Vec<Account> = (1..=ACCOUNTS)
        .map(|id| Account {
            id,
            ledger: 1,
            code: 1,
            flags: if id % 10 == 1 {
                AccountFlags::HISTORY
            } else {
                AccountFlags::empty()
            },
            ..Account::default()
        })
        .collect();
    for chunk in accounts.chunks(BATCH_EVENTS_MAX) {
        sm.create_accounts(1, chunk);
    }
    let mut rng = 1;
    let mut id = 0u128;
    let mut now = 1_000_000_000;
    while (id as u64) < TRANSFERS {
        let batch: Vec<Transfer> = (0..BATCH_EVENTS_MAX.min((TRANSFERS - id as u64) as usize))
            .map(|_| {
                id += 1;
                let r = splitmix(&mut rng);
                let dr = if id % 40 == 0 {
                    1
                } else {
                    2 + (r % (ACCOUNTS as u64 - 1)) as u128
                };
                let cr = if dr == ACCOUNTS { 2 } else { dr + 1 };
                Transfer {
                    id,
                    debit_account_id: dr,
                    credit_account_id: cr,
                    amount: 1,
                    ledger: 1,
                    code: 1 + (r >> 20) as u16 % 100,
                    user_data_128: u128::from((r >> 32) % 1000),
                    ..Transfer::default()
                }
            })
            .collect();
        now += 1_000_000;
        sm.create_transfers(now, &batch);
    }
    ensure!(
        sm.transfers_count() as u64 == TRANSFERS,
        "{} transfers created of {TRANSFERS}",
        sm.transfers_count()
    );
    Ok(sm)
}

fn command(target: &str) -> Result<api::Command> {
    let request = Request {
        method: Method::Get,
        target: target.into(),
        version: Version::Http11,
        keep_alive: true,
        body: Vec::new(),
    };
    match api::handle(&request, Role::Read) {
        Action::Ledger(command) => Ok(command),
        Action::Respond(response) => bail!("{target}: {}", String::from_utf8_lossy(&response.body)),
    }
}

fn main() -> Result<()> {
    let started = Instant::now();
    let sm = state()?;
    println!(
        "state: {} accounts, {} transfers, built in {:?}",
        sm.accounts_count(),
        sm.transfers_count(),
        started.elapsed()
    );
    println!("scan budget QUERY_SCAN_ROWS_MAX = {QUERY_SCAN_ROWS_MAX}; {ROUNDS} rounds each");
    let cases = [
        (
            "query_transfers, timestamp only, 181 rows",
            "/v1/transfers?limit=8189",
        ),
        (
            "query_transfers, timestamp range in the middle",
            "/v1/transfers?limit=8189&timestamp_min=1001000000&reversed=true",
        ),
        (
            "query_transfers, code matching 1 in 100",
            "/v1/transfers?code=7&limit=8189",
        ),
        (
            "query_transfers, user_data_128 matching 1 in 1000",
            "/v1/transfers?user_data_128=5&limit=8189",
        ),
        (
            "query_transfers, no match (whole budget)",
            "/v1/transfers?code=999&limit=8189",
        ),
        (
            "query_accounts, no match (all 10,000)",
            "/v1/accounts?ledger=2&limit=8189",
        ),
        (
            "account transfers, 25,000 on the account, 181 rows",
            "/v1/accounts/1/transfers?limit=8189",
        ),
        (
            "account transfers, no match (whole budget)",
            "/v1/accounts/1/transfers?code=999&limit=8189",
        ),
        (
            "account balances, history account, all rows",
            "/v1/accounts/11/balances?limit=8189",
        ),
        (
            "account balances, 25,000 on the account, 466 rows",
            "/v1/accounts/1/balances?limit=8189",
        ),
    ];
    for (name, target) in cases {
        let command = command(target)?;
        let mut answer_us = Vec::with_capacity(ROUNDS);
        let mut render_us = Vec::with_capacity(ROUNDS);
        let mut rows = 0;
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let reply = api::answer(&sm, &command);
            answer_us.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            let response = api::render(&reply);
            render_us.push(t.elapsed().as_secs_f64() * 1e6);
            let page: Vec<serde_json::Value> = serde_json::from_slice(&response.body)
                .with_context(|| format!("{name}: the page is not a JSON array"))?;
            rows = page.len();
        }
        answer_us.sort_by(f64::total_cmp);
        render_us.sort_by(f64::total_cmp);
        println!(
            "{name:<52} rows {rows:>4}: ledger thread p50 {:>6.1} µs p99 {:>7.1} max {:>7.1}; render p50 {:>6.1} µs",
            answer_us[ROUNDS / 2],
            answer_us[ROUNDS * 99 / 100],
            answer_us[ROUNDS - 1],
            render_us[ROUNDS / 2]
        );
    }
    Ok(())
}
