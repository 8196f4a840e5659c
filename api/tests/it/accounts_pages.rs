//! `GET /v1/accounts` pages: a page holds `limit` accounts whenever that
//! many follow its cursor, even when the owner's index names accounts whose
//! opening never reached the ledger (an opening whose outcome was unknown:
//! the index entry is written first and kept).

use std::collections::BTreeSet;

use anyhow::Context;
use reqwest::StatusCode;
use uuid::Uuid;
use wallet_storage::users::{UserStore, FILE_NAME};

use crate::helpers::TestApp;

#[tokio::test]
async fn a_page_is_full_even_past_entries_of_openings_that_never_happened() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (user_id, token) = app.user("pia").await?;
    let mut opened = BTreeSet::new();
    for _ in 0..3 {
        opened.insert(app.account(&token).await?);
    }
    // As a crash between the index write and the ledger's would leave it:
    // entries that sort before every real account.
    let dir = app.stop().await?;
    {
        let users = UserStore::open(&dir.path().join(FILE_NAME))?;
        let user = Uuid::try_parse(&user_id)?;
        for n in 1..=5u128 {
            users.add_owned(user, Uuid::from_u128(n)).await?;
        }
    }
    let app = TestApp::spawn_in(dir).await?;

    let mut listed = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v1/accounts?limit=2&cursor={cursor}"),
            None => "/v1/accounts?limit=2".to_string(),
        };
        let page = app.get(&path, Some(&token)).await?;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let items = page.body["items"].as_array().context("no items")?;
        pages += 1;
        let next = page.body["next_cursor"].as_str().map(str::to_string);
        if next.is_some() {
            assert_eq!(items.len(), 2, "page {pages} is short: {}", page.body);
        }
        listed.extend(items.iter().filter_map(|item| item["id"].as_str().map(str::to_string)));
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
        anyhow::ensure!(pages < 10, "no end to the pages");
    }
    assert_eq!(listed.iter().cloned().collect::<BTreeSet<_>>(), opened);
    assert_eq!(listed.len(), opened.len(), "each once");
    Ok(())
}
