//! The user store every node shares (`wallet_cluster::directory`, "Cluster
//! mode: users and rules shared by every node" in docs/ARCHITECTURE.md),
//! with two or three handles on one real nats-server standing for nodes:
//! what one writes the others read, an email is taken once and a cap holds
//! when nodes race, a node started later finds everything (and nothing
//! deleted), and the copies follow again after the server restarts.

use uuid::Uuid;
use wallet_cluster::directory::{DirectoryOptions, SharedDirectory};
use wallet_storage::sessions::SessionRecord;
use wallet_storage::users::{Role, StoredRule, StoredUser, UserStore, UserStoreError};
use wallet_testkit::nats::NatsServer;

use crate::shard_journal::{nats, runtime};

/// A node's user store on `server`'s shared directory.
async fn node(server: &NatsServer) -> anyhow::Result<UserStore> {
    Ok(UserStore::over(SharedDirectory::open(DirectoryOptions::new(server.url())).await?))
}

pub(crate) fn user(email: &str) -> StoredUser {
    StoredUser {
        id: Uuid::new_v4(),
        email: email.to_string(),
        name: "Ada".to_string(),
        password_hash: "x".to_string(),
        role: Role::User,
        created_at_ms: 1,
        disabled: false,
        session_epoch: 0,
    }
}

fn session(started_at_ms: u64, secret_hash: &str) -> SessionRecord {
    SessionRecord {
        started_at_ms,
        expires_at_ms: u64::MAX,
        refresh_expires_at_ms: u64::MAX,
        secret_hash: secret_hash.to_string(),
        session_epoch: 0,
    }
}

#[test]
fn what_one_node_writes_the_others_read() -> anyhow::Result<()> {
    let (_root, server) = nats()?;
    runtime()?.block_on(async {
        let (one, two) = (node(&server).await?, node(&server).await?);
        let ada = user("ada@example.com");
        one.create(&ada).await?;
        // No wait: a read that finds nothing catches up first.
        anyhow::ensure!(two.by_email("ada@example.com").await? == Some(ada.clone()), "user not found");
        anyhow::ensure!(matches!(
            two.create(&user("ada@example.com")).await,
            Err(UserStoreError::EmailTaken)
        ));

        let account = Uuid::new_v4();
        one.add_owned(ada.id, account).await?;
        anyhow::ensure!(two.owns(ada.id, account).await?, "the account directory entry is not shared");

        two.modify(ada.id, |user| user.name = "Ada L.".to_string()).await?;
        one.modify(ada.id, |user| user.disabled = true).await?;
        // A read that finds the key may lag another node's write by a few
        // milliseconds (its copy has not applied it yet); a catch-up ends that.
        two.catch_up().await?;
        let now = two.get(ada.id).await?.ok_or_else(|| anyhow::anyhow!("user gone"))?;
        anyhow::ensure!(now.name == "Ada L." && now.disabled, "a change was lost: {now:?}");

        // A session started on one node is refreshed on the other; the
        // first node's stale read of it cannot be spent again.
        let family = Uuid::new_v4();
        one.sessions().add(ada.id, family, &session(1, "a"), 1, 4).await?;
        let read_on_one =
            one.sessions().get(ada.id, family).await?.ok_or_else(|| anyhow::anyhow!("no session"))?;
        let read_on_two =
            two.sessions().get(ada.id, family).await?.ok_or_else(|| anyhow::anyhow!("no session"))?;
        anyhow::ensure!(two.sessions().replace(&read_on_two, &session(1, "b")).await?);
        anyhow::ensure!(
            !one.sessions().replace(&read_on_one, &session(1, "c")).await?,
            "a spent token was spent again"
        );

        // A rule made on one node moves the other's counter (its ledger
        // loads the rules again), and is removed there.
        let mut rule_changes = two.rule_changes().ok_or_else(|| anyhow::anyhow!("no rule changes"))?;
        let rule = StoredRule {
            id: Uuid::new_v4(),
            created_at_ms: 1,
            rule: serde_json::from_value(serde_json::json!({
                "name": "cap", "kind": "max_amount", "scope": {"type": "global"}, "action": "reject",
                "parameters": {"amount": "1000", "asset": "USD"}
            }))?,
        };
        one.put_rule(&rule).await?;
        tokio::time::timeout(std::time::Duration::from_secs(5), rule_changes.changed()).await??;
        anyhow::ensure!(two.rules()? == vec![rule.clone()]);
        anyhow::ensure!(two.remove_rule(rule.id).await?, "the rule is not there on the other node");
        one.catch_up().await?;
        anyhow::ensure!(one.rules()?.is_empty(), "a removed rule is still there");
        let replaced = one.replace_rule(rule.id, Clone::clone).await?;
        anyhow::ensure!(
            replaced.is_none() && two.rules()?.is_empty(),
            "a replacement made a removed rule again"
        );

        // Settings made once: the first node's value is every node's.
        let first = one.set_meta_once("secret", b"first").await?;
        let second = two.set_meta_once("secret", b"second").await?;
        anyhow::ensure!(first == b"first" && second == b"first", "two nodes kept two secrets");
        Ok(())
    })
}

#[test]
fn an_email_is_taken_once_and_a_cap_holds_when_nodes_race() -> anyhow::Result<()> {
    let (_root, server) = nats()?;
    runtime()?.block_on(async {
        let (one, two) = (node(&server).await?, node(&server).await?);
        for round in 0..20 {
            let email = format!("race{round}@example.com");
            let (first, second) = (user(&email), user(&email));
            let (a, b) = tokio::join!(one.create(&first), two.create(&second));
            let made = [&a, &b].iter().filter(|outcome| outcome.is_ok()).count();
            anyhow::ensure!(made == 1, "round {round}: {a:?} and {b:?}");
        }

        let ada = user("capped@example.com");
        one.create(&ada).await?;
        const CAP: usize = 5;
        let open = |store: UserStore| async move {
            let mut recorded = 0;
            for _ in 0..10 {
                if store.add_owned_capped(ada.id, Uuid::new_v4(), CAP).await? {
                    recorded += 1;
                }
            }
            anyhow::Ok(recorded)
        };
        let (a, b) = tokio::join!(open(one.clone()), open(two.clone()));
        let (a, b) = (a?, b?);
        two.catch_up().await?;
        let owned = two.owned(ada.id, None, 100)?.len();
        anyhow::ensure!(a + b == CAP && owned == CAP, "the nodes recorded {a} and {b}; {owned} owned");
        Ok(())
    })
}

#[test]
fn a_node_started_later_reads_everything_and_nothing_deleted() -> anyhow::Result<()> {
    let (_root, server) = nats()?;
    runtime()?.block_on(async {
        let one = node(&server).await?;
        let ada = user("ada@example.com");
        one.create(&ada).await?;
        let (kept, dropped) = (Uuid::new_v4(), Uuid::new_v4());
        one.add_owned(ada.id, kept).await?;
        one.add_owned(ada.id, dropped).await?;
        one.remove_owned(ada.id, dropped).await?;
        let family = Uuid::new_v4();
        one.sessions().add(ada.id, family, &session(1, "a"), 1, 4).await?;
        anyhow::ensure!(one.sessions().end_all(ada.id).await? == 1);
        // A deleted key can be made again where it must be absent.
        one.set_meta("setting", b"old").await?;
        one.remove_meta("setting").await?;
        anyhow::ensure!(one.set_meta_once("setting", b"new").await? == b"new", "a deleted key stays taken");

        let later = node(&server).await?;
        anyhow::ensure!(later.by_email("ada@example.com").await? == Some(ada.clone()));
        anyhow::ensure!(later.owned(ada.id, None, 10)? == vec![kept], "deleted entries came back");
        anyhow::ensure!(later.sessions().get(ada.id, family).await?.is_none(), "an ended session came back");
        anyhow::ensure!(later.sessions().count(ada.id)? == 0);
        anyhow::ensure!(later.meta("setting")? == Some(b"new".to_vec()));
        Ok(())
    })
}

#[test]
fn the_copies_follow_again_after_the_server_restarts() -> anyhow::Result<()> {
    let (_root, mut server) = nats()?;
    let runtime = runtime()?;
    let (one, two) = runtime.block_on(async { anyhow::Ok((node(&server).await?, node(&server).await?)) })?;
    let ada = user("ada@example.com");
    runtime.block_on(one.create(&ada))?;
    server.kill()?;
    let refused = runtime.block_on(one.create(&user("bob@example.com")));
    anyhow::ensure!(matches!(refused, Err(UserStoreError::Unavailable(_))), "{refused:?}");
    server.restart()?;
    runtime.block_on(async {
        // The clients reconnect by themselves; give them a few seconds.
        let carol = user("carol@example.com");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match one.create(&carol).await {
                Ok(()) | Err(UserStoreError::EmailTaken) => break,
                Err(error) if tokio::time::Instant::now() > deadline => return Err(error.into()),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            }
        }
        let account = Uuid::new_v4();
        one.add_owned(carol.id, account).await?;
        // Without catching up: the other node's feed follows by itself.
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while two.owned(carol.id, None, 10)? != vec![account] {
            anyhow::ensure!(tokio::time::Instant::now() < until, "the other node's copy stopped following");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        anyhow::ensure!(two.by_email("ada@example.com").await? == Some(ada.clone()));
        anyhow::Ok(())
    })?;
    drop((one, two));
    Ok(())
}
