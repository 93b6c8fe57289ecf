//! KEK epochs with a provider that manages them (`MemoryKeks`) and a `ManualClock`: rotation
//! on schedule, resumed after a crash, retention, two processes at once, the old-backup drill,
//! and the same reports over HTTP. KEKs handed in keep their manual rotation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use lethe_keyvault::{
    EpochInfo, EpochPolicy, EpochState, EpochTick, KekError, KeyId, KeyLookup, KeyVault, LocalVault, ManualClock,
    OpenOptions, VaultError,
};

use crate::support::{Engine, MemoryKeks, TestDb, kek, live, nk, ok};

both_engines!(
    rotates_only_after_rotate_every_and_rewraps_every_key,
    reads_and_creates_go_on_during_a_rotation,
    interrupted_rotation_resumes_at_open,
    superseded_epoch_is_destroyed_only_after_retain,
    two_vaults_ticking_at_once_start_one_epoch,
    old_backup_opens_with_its_keys_unreadable,
    wrong_provider_is_refused_at_open,
    given_keks_rotate_by_hand_and_never_tick,
    kek_epochs_over_http_equal_in_process,
    background_task_rotates_and_ends_with_the_vault,
    vault_of_the_previous_release_migrates_to_epochs,
);

const DAY: Duration = Duration::from_secs(24 * 3600);
/// 2023-11-14, in unix microseconds: any fixed start does.
const START_MICROS: i64 = 1_700_000_000_000_000;

fn policy(batch_size: usize) -> EpochPolicy {
    EpochPolicy {
        rotate_every: 7 * DAY,
        retain: 3 * DAY,
        batch_size,
        ..EpochPolicy::default()
    }
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(START_MICROS))
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

type Keys = Vec<(KeyId, Vec<u8>)>;

async fn make_keys(vault: &dyn KeyVault, prefix: &str, n: usize) -> Keys {
    let req: Vec<_> = (0..n)
        .map(|i| nk(&format!("{prefix}-{i}"), Some(&format!("subject-{}", i % 3))))
        .collect();
    ok(vault.create_keys(&req))
        .await
        .into_iter()
        .map(|(id, dek)| (id, dek.expose_secret().to_vec()))
        .collect()
}

async fn assert_readable(vault: &dyn KeyVault, keys: &Keys) {
    let ids: Vec<KeyId> = keys.iter().map(|(id, _)| *id).collect();
    let found = ok(vault.fetch_keys(&ids)).await;
    for ((_, want), (_, lookup)) in keys.iter().zip(&found) {
        assert_eq!(&live(lookup).expose_secret()[..], &want[..]);
    }
}

/// The epochs as (epoch, state, live keys).
async fn epochs(vault: &dyn KeyVault) -> Vec<(u32, EpochState, u64)> {
    ok(vault.kek_epochs())
        .await
        .iter()
        .map(|e| (e.epoch, e.state, e.live_keys))
        .collect()
}

async fn tick(vault: &LocalVault) -> EpochTick {
    ok(vault.tick_epochs()).await
}

async fn rotates_only_after_rotate_every_and_rewraps_every_key(db: TestDb) {
    let (keks, clock) = (MemoryKeks::new(), clock());
    let vault = ok(db.open_managed(&keks, policy(3), &clock)).await;
    assert_eq!(epochs(&vault).await, vec![(1, EpochState::Active, 0)]);
    let keys = make_keys(&vault, "s", 10).await;
    let before = db.wrapped_bytes(keys[0].0).await;

    clock.advance(7 * DAY - Duration::from_secs(1));
    assert_eq!(tick(&vault).await, EpochTick::default(), "nothing is due yet");
    assert!(db.stored_kek_versions().await.values().all(|v| *v == 1));

    clock.advance(Duration::from_secs(1));
    let done = tick(&vault).await;
    assert_eq!(done.rotated, Some((1, 2)));
    assert_eq!(done.rewrapped, 10);
    assert!(done.destroyed.is_empty(), "the old epoch is retained");
    let stored = db.stored_kek_versions().await;
    assert_eq!(stored.len(), 10);
    assert!(stored.values().all(|v| *v == 2), "{stored:?}");
    assert_ne!(db.wrapped_bytes(keys[0].0).await, before, "stored bytes re-wrapped");
    assert_readable(&vault, &keys).await;

    let now = START_MICROS + micros(7 * DAY);
    let info = ok(vault.kek_epochs()).await;
    assert_eq!(
        info,
        vec![
            EpochInfo {
                epoch: 1,
                state: EpochState::Retired,
                activated_at: Some(START_MICROS),
                superseded_at: Some(now),
                destroyed_at: None,
                live_keys: 0,
            },
            EpochInfo {
                epoch: 2,
                state: EpochState::Active,
                activated_at: Some(now),
                superseded_at: None,
                destroyed_at: None,
                live_keys: 10,
            },
        ]
    );
    assert!(keks.holds(1) && keks.holds(2));
    let stats = ok(vault.stats()).await;
    assert_eq!((stats.kek_version, stats.keys_unreadable), (2, 0));
    assert_eq!(stats.kek_provider, "memory");
    // New keys go to the new epoch; a second tick at the same time does nothing.
    let more = make_keys(&vault, "t", 2).await;
    assert_eq!(db.stored_kek_versions().await.get(&more[0].0), Some(&2));
    assert_eq!(tick(&vault).await, EpochTick::default());
}

async fn reads_and_creates_go_on_during_a_rotation(db: TestDb) {
    let (keks, clock) = (MemoryKeks::new(), clock());
    let vault = Arc::new(ok(db.open_managed(&keks, policy(1), &clock)).await);
    let keys = make_keys(&*vault, "s", 40).await;
    clock.advance(7 * DAY);
    let ticking = {
        let vault = vault.clone();
        tokio::spawn(async move { vault.tick_epochs().await })
    };
    let mut created = Vec::new();
    let mut round = 0;
    while !ticking.is_finished() || round < 3 {
        assert_readable(&*vault, &keys).await;
        created.extend(make_keys(&*vault, &format!("during-{round}"), 2).await);
        round += 1;
    }
    let done = ticking
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("tick: {e}"));
    assert_eq!(done.rotated, Some((1, 2)));
    assert_readable(&*vault, &keys).await;
    assert_readable(&*vault, &created).await;
    assert!(db.stored_kek_versions().await.values().all(|v| *v == 2));
}

async fn interrupted_rotation_resumes_at_open(db: TestDb) {
    let (keks, clock) = (MemoryKeks::new(), clock());
    let vault = ok(db.open_managed(&keks, policy(1), &clock)).await;
    let mut keys = make_keys(&vault, "s", 6).await;
    clock.advance(7 * DAY);
    // The third re-wrap fails: the rotation stops with two keys on the new epoch.
    keks.fail_wraps_after(3);
    assert!(vault.tick_epochs().await.is_err());
    keks.fail_wraps_after(-1);
    let stored = db.stored_kek_versions().await;
    assert_eq!(stored.values().filter(|v| **v == 2).count(), 2, "{stored:?}");
    assert_eq!(
        epochs(&vault).await,
        vec![(1, EpochState::Active, 4), (2, EpochState::Pending, 2)]
    );
    // Meanwhile every key reads, and new keys are created (on the new epoch).
    assert_readable(&vault, &keys).await;
    let more = make_keys(&vault, "t", 3).await;
    assert_readable(&vault, &more).await;
    keys.extend(more);
    drop(vault);

    // Reopening resumes the rotation before it returns.
    let vault = ok(db.open_managed(&keks, policy(1), &clock)).await;
    assert_eq!(
        epochs(&vault).await,
        vec![(1, EpochState::Retired, 0), (2, EpochState::Active, 9)]
    );
    assert!(db.stored_kek_versions().await.values().all(|v| *v == 2));
    assert_readable(&vault, &keys).await;
    assert_eq!(tick(&vault).await, EpochTick::default());

    // Interrupted again on the next rotation, this time resumed by a tick.
    clock.advance(7 * DAY);
    keks.fail_wraps_after(4);
    assert!(vault.tick_epochs().await.is_err());
    keks.fail_wraps_after(-1);
    let done = tick(&vault).await;
    assert_eq!(done.rotated, Some((2, 3)));
    assert!(db.stored_kek_versions().await.values().all(|v| *v == 3));
    assert_readable(&vault, &keys).await;
}

async fn superseded_epoch_is_destroyed_only_after_retain(db: TestDb) {
    let (keks, clock) = (MemoryKeks::new(), clock());
    let vault = ok(db.open_managed(&keks, policy(100), &clock)).await;
    let keys = make_keys(&vault, "s", 5).await;
    clock.advance(7 * DAY);
    assert_eq!(tick(&vault).await.rotated, Some((1, 2)));

    clock.advance(3 * DAY - Duration::from_secs(1));
    assert_eq!(tick(&vault).await, EpochTick::default());
    assert!(keks.holds(1), "kept until retain has passed");

    clock.advance(Duration::from_secs(1));
    let done = tick(&vault).await;
    assert_eq!(done.destroyed, vec![1]);
    assert!(!keks.holds(1) && keks.holds(2));
    let info = ok(vault.kek_epochs()).await;
    assert_eq!(info[0].state, EpochState::Destroyed);
    assert_eq!(info[0].destroyed_at, Some(START_MICROS + micros(10 * DAY)));
    assert_eq!(info[1].state, EpochState::Active);
    assert_readable(&vault, &keys).await;
    assert_eq!(ok(vault.stats()).await.keys_unreadable, 0);
    assert_eq!(tick(&vault).await, EpochTick::default(), "destroyed once");

    // A crash between the provider's destroy and its record is repaired by the next tick.
    clock.advance(4 * DAY);
    assert_eq!(tick(&vault).await.rotated, Some((2, 3)));
    clock.advance(3 * DAY);
    use lethe_keyvault::KekProvider as _;
    ok(async { keks.destroy_epoch(2).map_err(VaultError::from) }).await;
    let done = tick(&vault).await;
    assert_eq!(done.destroyed, vec![2]);
    assert_eq!(epochs(&vault).await[1], (2, EpochState::Destroyed, 0));
}

async fn two_vaults_ticking_at_once_start_one_epoch(db: TestDb) {
    let (keks, clock) = (MemoryKeks::new(), clock());
    let a = ok(db.open_managed(&keks, policy(5), &clock)).await;
    let b = ok(db.open_managed(&keks, policy(5), &clock)).await;
    let mut keys = make_keys(&a, "a", 30).await;
    keys.extend(make_keys(&b, "b", 30).await);
    clock.advance(7 * DAY);
    let (ta, tb) = tokio::join!(a.tick_epochs(), b.tick_epochs());
    let (ta, tb) = (
        ta.unwrap_or_else(|e| panic!("a: {e}")),
        tb.unwrap_or_else(|e| panic!("b: {e}")),
    );
    let rotations: Vec<_> = [&ta, &tb].iter().filter_map(|t| t.rotated).collect();
    assert_eq!(rotations, vec![(1, 2)], "exactly one switch: {ta:?} {tb:?}");
    assert_eq!(
        epochs(&a).await,
        vec![(1, EpochState::Retired, 0), (2, EpochState::Active, 60)]
    );
    use lethe_keyvault::KekProvider as _;
    assert_eq!(keks.epochs().ok(), Some(vec![1, 2]), "one new epoch in the provider");
    assert!(db.stored_kek_versions().await.values().all(|v| *v == 2));
    assert_readable(&a, &keys).await;
    assert_readable(&b, &keys).await;
    // Both go on creating keys, on the new epoch.
    keys.extend(make_keys(&a, "a2", 2).await);
    keys.extend(make_keys(&b, "b2", 2).await);
    assert_readable(&a, &keys).await;
    assert!(db.stored_kek_versions().await.values().all(|v| *v == 2));
}

/// The old-backup drill at vault level: a copy of the vault database taken before a rotation
/// and its retention, opened afterwards with the same provider, opens, reports its keys
/// unreadable, and serves new keys.
async fn old_backup_opens_with_its_keys_unreadable(db: TestDb) {
    let (keks, clock) = (MemoryKeks::new(), clock());
    let vault = ok(db.open_managed(&keks, policy(100), &clock)).await;
    let old = make_keys(&vault, "old", 8).await;
    drop(vault);
    let backup = db.copy().await;

    let vault = ok(db.open_managed(&keks, policy(100), &clock)).await;
    let newer = make_keys(&vault, "newer", 2).await;
    clock.advance(7 * DAY);
    assert_eq!(tick(&vault).await.rotated, Some((1, 2)));
    clock.advance(3 * DAY);
    assert_eq!(tick(&vault).await.destroyed, vec![1]);
    drop(vault);

    let restored = ok(backup.open_managed(&keks, policy(100), &clock)).await;
    let stats = ok(restored.stats()).await;
    assert_eq!((stats.live_keys, stats.keys_unreadable), (8, 8));
    // A new epoch above every one the provider ever made; the old one reported missing.
    assert_eq!(stats.kek_version, 3);
    assert_eq!(
        epochs(&restored).await,
        vec![(1, EpochState::Missing, 8), (3, EpochState::Active, 0)]
    );
    let ids: Vec<KeyId> = old.iter().map(|(id, _)| *id).collect();
    for (_, lookup) in ok(restored.fetch_keys(&ids)).await {
        assert!(matches!(lookup, KeyLookup::Unreadable { epoch: 1 }), "{lookup:?}");
    }
    // Asking for an old stream's key again is a clear refusal, not a panic.
    match restored.create_keys(&[nk("old-0", Some("subject-0"))]).await {
        Err(VaultError::KeyUnreadable { stream, epoch }) => assert_eq!((stream.as_str(), epoch), ("old-0", 1)),
        other => panic!("expected KeyUnreadable, got {:?}", other.map(|k| k.len())),
    }
    let fresh = make_keys(&restored, "fresh", 3).await;
    assert_readable(&restored, &fresh).await;
    // Ticks leave the unreadable keys alone (and never fail on them).
    clock.advance(7 * DAY);
    assert_eq!(tick(&restored).await.rotated, Some((3, 4)));
    assert_eq!(ok(restored.stats()).await.keys_unreadable, 8);
    assert_readable(&restored, &fresh).await;
    drop(restored);

    // The live database was not disturbed by its restored copy sharing the provider.
    let vault = ok(db.open_managed(&keks, policy(100), &clock)).await;
    let mut all = old;
    all.extend(newer);
    assert_readable(&vault, &all).await;
}

async fn wrong_provider_is_refused_at_open(db: TestDb) {
    let (keks, clock) = (MemoryKeks::new(), clock());
    drop(ok(db.open_managed(&keks, policy(10), &clock)).await);
    // Another provider holding a different KEK for epoch 1: a wrong keys directory.
    let other = MemoryKeks::new();
    use lethe_keyvault::KekProvider as _;
    ok(async { other.create_epoch(1).map_err(VaultError::from) }).await;
    match db.open_managed(&other, policy(10), &clock).await {
        Err(VaultError::Kek(KekError::Mismatch(m))) => assert!(m.contains("epoch 1"), "{m}"),
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // A vault whose KEK was handed in is recognised by its legacy check value.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = format!("sqlite://{}", dir.path().join("legacy.db").display());
    let keys = {
        let vault = ok(LocalVault::open(&url, kek(1), vec![])).await;
        make_keys(&vault, "l", 3).await
    };
    let vault = ok(LocalVault::open_with_provider(
        &url,
        MemoryKeks::with(1, kek(1)),
        policy(10),
        clock.clone(),
    ))
    .await;
    assert_readable(&vault, &keys).await;
    drop(vault);
    assert!(matches!(
        LocalVault::open_with_provider(&url, MemoryKeks::with(1, kek(2)), policy(10), clock.clone()).await,
        Err(VaultError::Kek(KekError::Mismatch(_)))
    ));
}

async fn given_keks_rotate_by_hand_and_never_tick(db: TestDb) {
    let vault = ok(db.open_local(kek(1), vec![])).await;
    let keys = make_keys(&vault, "s", 4).await;
    assert_eq!(tick(&vault).await, EpochTick::default());
    let report = ok(vault.rotate_kek(kek(2))).await;
    assert_eq!((report.from_version, report.to_version, report.complete), (1, 2, true));
    assert_eq!(tick(&vault).await, EpochTick::default());
    let info = ok(vault.kek_epochs()).await;
    assert_eq!(
        info.iter().map(|e| (e.epoch, e.state, e.live_keys)).collect::<Vec<_>>(),
        vec![(1, EpochState::Retired, 0), (2, EpochState::Active, 4)]
    );
    assert!(info[0].superseded_at.is_some() && info[1].activated_at.is_some());
    let stats = ok(vault.stats()).await;
    assert_eq!((stats.kek_provider.as_str(), stats.keys_unreadable), ("static", 0));
    assert_readable(&vault, &keys).await;

    // A managed vault cannot be rotated to a KEK handed in.
    let managed_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = format!("sqlite://{}", managed_dir.path().join("m.db").display());
    let managed = ok(LocalVault::open_with_provider(
        &url,
        MemoryKeks::new(),
        policy(10),
        clock(),
    ))
    .await;
    assert!(matches!(
        managed.rotate_kek(kek(3)).await,
        Err(VaultError::Kek(KekError::Unsupported { .. }))
    ));
}

const TOKEN: &str = "test-token-0123456789abcdef";

async fn serve(vault: Arc<dyn KeyVault>) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = lethe_keyvault::server::router(vault, TOKEN).unwrap_or_else(|e| panic!("router: {e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    (url, stop)
}

async fn kek_epochs_over_http_equal_in_process(db: TestDb) {
    let (keks, clock) = (MemoryKeks::new(), clock());
    let vault = ok(db.open_managed(&keks, policy(10), &clock)).await;
    let old = make_keys(&vault, "old", 3).await;
    drop(vault);
    let backup = db.copy().await;
    let vault = ok(db.open_managed(&keks, policy(10), &clock)).await;
    clock.advance(7 * DAY);
    tick(&vault).await;
    clock.advance(3 * DAY);
    tick(&vault).await;
    drop(vault);

    let restored: Arc<LocalVault> = Arc::new(ok(backup.open_managed(&keks, policy(10), &clock)).await);
    let fresh = make_keys(&*restored, "fresh", 2).await;
    let (url, stop) = serve(restored.clone()).await;
    let remote = ok(lethe_keyvault::open(
        &url,
        OpenOptions {
            token: Some(TOKEN.into()),
            ..Default::default()
        },
    ))
    .await;
    let here = ok(restored.kek_epochs()).await;
    assert_eq!(ok(remote.kek_epochs()).await, here);
    assert_eq!(here.len(), 2);
    assert_eq!(ok(remote.stats()).await, ok(restored.stats()).await);

    // Unreadable keys cross the wire with their epoch; an unreadable stream's create too.
    let ids: Vec<KeyId> = old.iter().chain(&fresh).map(|(id, _)| *id).collect();
    let found = ok(remote.fetch_keys(&ids)).await;
    for (_, lookup) in &found[..3] {
        assert!(matches!(lookup, KeyLookup::Unreadable { epoch: 1 }), "{lookup:?}");
    }
    assert_readable(&*remote, &fresh).await;
    match remote.create_keys(&[nk("old-1", Some("subject-1"))]).await {
        Err(VaultError::KeyUnreadable { stream, epoch }) => assert_eq!((stream.as_str(), epoch), ("old-1", 1)),
        other => panic!("expected KeyUnreadable, got {:?}", other.map(|k| k.len())),
    }
    let raw = reqwest::Client::new()
        .get(format!("{url}/v1/kek/epochs"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(raw.status(), 401, "behind the token like the others");
    let _ = stop.send(());
}

async fn background_task_rotates_and_ends_with_the_vault(db: TestDb) {
    let (keks, clock) = (MemoryKeks::new(), clock());
    let vault = Arc::new(
        ok(db.open_managed(
            &keks,
            EpochPolicy {
                check_every: Duration::from_millis(20),
                ..policy(10)
            },
            &clock,
        ))
        .await,
    );
    let keys = make_keys(&*vault, "s", 5).await;
    let task = vault.spawn_epochs();
    clock.advance(7 * DAY);
    let mut rotated = false;
    for _ in 0..500 {
        let info: HashMap<u32, EpochState> = ok(vault.kek_epochs())
            .await
            .into_iter()
            .map(|e| (e.epoch, e.state))
            .collect();
        if info.get(&2) == Some(&EpochState::Active) {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(rotated, "the background task rotated");
    assert_readable(&*vault, &keys).await;
    drop(vault);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap_or_else(|_| panic!("the task outlived its vault"))
        .unwrap_or_else(|e| panic!("{e}"));

    // `open` with a provider starts the task by itself.
    let vault = ok(lethe_keyvault::open(
        &db.url,
        OpenOptions {
            provider: Some(keks.clone()),
            epoch_policy: EpochPolicy {
                check_every: Duration::from_millis(20),
                ..policy(10)
            },
            clock: Some(clock.clone()),
            ..Default::default()
        },
    ))
    .await;
    clock.advance(7 * DAY);
    let mut rotated = false;
    for _ in 0..500 {
        if ok(vault.stats()).await.kek_version == 3 {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(rotated, "open's background task rotated");
    assert_readable(&*vault, &keys).await;
}

/// The previous release's schema (migrations 1 to 3), made by sqlx's migrator under the
/// vault's table name, with a retired and an active KEK version recorded by legacy check
/// values and one key wrapped with the active KEK.
async fn previous_release_vault(db: &TestDb) -> (KeyId, Vec<u8>) {
    use sqlx::{AssertSqlSafe, Connection as _, SqlSafeStr as _};
    let files: &[(i64, &str, &str)] = match db.engine {
        Engine::Sqlite => &[
            (1, "vault", include_str!("../../migrations/sqlite/0001_vault.sql")),
            (
                3,
                "forgotten subjects",
                include_str!("../../migrations/sqlite/0003_forgotten_subjects.sql"),
            ),
        ],
        Engine::Postgres => &[
            (1, "vault", include_str!("../../migrations/postgres/0001_vault.sql")),
            (
                2,
                "write path",
                include_str!("../../migrations/postgres/0002_write_path.sql"),
            ),
            (
                3,
                "forgotten subjects",
                include_str!("../../migrations/postgres/0003_forgotten_subjects.sql"),
            ),
        ],
    };
    let migrations = files
        .iter()
        .map(|(version, description, sql)| {
            sqlx::migrate::Migration::new(
                *version,
                (*description).into(),
                sqlx::migrate::MigrationType::Simple,
                AssertSqlSafe(*sql).into_sql_str(),
                false,
            )
        })
        .collect();
    let mut migrator = sqlx::migrate::Migrator::with_migrations(migrations);
    migrator.dangerous_set_table_name("_lethe_keyvault_migrations");
    let id = KeyId::new_random();
    let dek = [42u8; 32];
    let wrapped = kek(1)
        .wrap_dek(
            id,
            &lethe_keyvault::Dek::from_slice(&dek).unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let statements: [(&str, Vec<u8>); 2] = [
        (
            "INSERT INTO kek_versions (version, check_value, state) VALUES (1, $1, 'retired')",
            kek(9).check_value().to_vec(),
        ),
        (
            "INSERT INTO kek_versions (version, check_value, state) VALUES (2, $1, 'active')",
            kek(1).check_value().to_vec(),
        ),
    ];
    let keys = "INSERT INTO vault_keys (id, stream, subject) VALUES ($1, 'legacy', NULL)";
    let material = "INSERT INTO vault_key_material (id, kek_version, wrapped) VALUES ($1, 2, $2)";
    match db.engine {
        Engine::Sqlite => {
            let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&db.url)
                .unwrap_or_else(|e| panic!("{e}"))
                .create_if_missing(true);
            let mut c = sqlx::SqliteConnection::connect_with(&options)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            migrator.run(&mut c).await.unwrap_or_else(|e| panic!("{e}"));
            for (sql, check) in &statements {
                sqlx::query(*sql)
                    .bind(check.as_slice())
                    .execute(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            sqlx::query(keys)
                .bind(id.0)
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            sqlx::query(material)
                .bind(id.0)
                .bind(wrapped.as_slice())
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let _ = c.close().await;
        }
        Engine::Postgres => {
            let mut c = sqlx::PgConnection::connect(&db.url)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            migrator.run(&mut c).await.unwrap_or_else(|e| panic!("{e}"));
            for (sql, check) in &statements {
                sqlx::query(*sql)
                    .bind(check.as_slice())
                    .execute(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            sqlx::query(keys)
                .bind(id.0)
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            sqlx::query(material)
                .bind(id.0)
                .bind(wrapped.as_slice())
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let _ = c.close().await;
        }
    }
    (id, dek.to_vec())
}

async fn vault_of_the_previous_release_migrates_to_epochs(db: TestDb) {
    let key = previous_release_vault(&db).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, micros);
    let vault = ok(db.open_local(kek(1), vec![])).await;
    assert_readable(&vault, &vec![key.clone()]).await;
    // Versions recorded before epochs count from the migration, by the database's clock.
    let info = ok(vault.kek_epochs()).await;
    assert_eq!(
        info.iter().map(|e| (e.epoch, e.state, e.live_keys)).collect::<Vec<_>>(),
        vec![(1, EpochState::Retired, 0), (2, EpochState::Active, 1)]
    );
    let near = |t: Option<i64>| t.is_some_and(|t| (t - before).abs() < micros(Duration::from_secs(120)));
    assert!(
        near(info[0].superseded_at) && info[0].activated_at.is_none(),
        "{info:?}"
    );
    assert!(
        near(info[1].activated_at) && info[1].superseded_at.is_none(),
        "{info:?}"
    );
    drop(vault);

    // A provider holding that KEK as epoch 2 takes the vault over, recognising it by its
    // legacy check value, and rotates it like any other.
    let keks = MemoryKeks::with(2, kek(1));
    // (The migration's clock is the database's, which ran a moment after `before`.)
    let clock = Arc::new(ManualClock::new(before + micros(Duration::from_secs(60))));
    let vault = ok(db.open_managed(&keks, policy(10), &clock)).await;
    assert_readable(&vault, &vec![key.clone()]).await;
    clock.advance(7 * DAY);
    assert_eq!(tick(&vault).await.rotated, Some((2, 3)));
    assert_readable(&vault, &vec![key]).await;
    assert_eq!(
        db.stored_kek_versions().await.values().copied().collect::<Vec<_>>(),
        vec![3]
    );
}
