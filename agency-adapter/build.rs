//! `sqlx::migrate!` embeds `migrations/` when the crate compiles; a migration added later must
//! rebuild the crate, which cargo does not know on its own.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
