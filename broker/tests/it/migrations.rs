//! Migration numbers are handed out per change, and changes merge in any order: this branch's
//! revocations are SQLite 0007 and PostgreSQL 0006, leaving 0006 and 0005 to another change. sqlx's
//! migrator must accept the gap, and apply the missing number when it arrives later, below one a
//! database already ran.

use sqlx::migrate::Migrator;

#[tokio::test]
async fn a_migration_numbered_below_one_already_applied_is_applied_when_it_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("migrations");
    std::fs::create_dir(&scripts).unwrap();
    std::fs::write(
        scripts.join("0001_first.sql"),
        "CREATE TABLE first (id INTEGER);",
    )
    .unwrap();
    std::fs::write(
        scripts.join("0003_third.sql"),
        "CREATE TABLE third (id INTEGER);",
    )
    .unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("db.sqlite").display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    // As a broker starts: the migrations in the folder now, whatever ran before.
    let start = || async {
        let migrator = Migrator::new(scripts.as_path()).await.unwrap();
        migrator.run(&pool).await.unwrap();
    };

    start().await;
    std::fs::write(
        scripts.join("0002_second.sql"),
        "CREATE TABLE second (id INTEGER);",
    )
    .unwrap();
    start().await;

    let applied: Vec<(i64,)> =
        sqlx::query_as("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(applied, vec![(1,), (2,), (3,)]);
    sqlx::query("SELECT id FROM second")
        .fetch_all(&pool)
        .await
        .unwrap();
}
