//! Build script: rebuild when a migration is added. `embed_migrations!` reads the
//! `migrations/` folder at compile time, and Cargo tracks the files it embeds but not the
//! folder, so a new migration would otherwise not reach the binary until some source changes.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
