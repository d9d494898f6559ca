//! Link the loader at 1 MiB with its own script, as a non-PIE executable.
//!
//! `--no-pie` is passed as a link argument rather than through `-Crelocation-model=static` in a
//! cargo config file: a caller's RUSTFLAGS would silently replace the config's rustflags, while
//! build-script link arguments always apply.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
    println!("cargo:rustc-link-arg-bins=--no-pie");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
}
