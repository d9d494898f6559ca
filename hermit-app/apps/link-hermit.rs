//! Build script shared by every application under hermit-app/apps (each names it with
//! `build = "../link-hermit.rs"`): link the Hermit kernel archive into the application.
//!
//! The image build sets HERMIT_KERNEL_DIR to the directory holding the exported `libhermit.a`
//! (stock or patched kernel); a new archive there relinks the application.

fn main() {
    println!("cargo:rerun-if-env-changed=HERMIT_KERNEL_DIR");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("hermit") {
        return;
    }
    let dir = std::env::var("HERMIT_KERNEL_DIR")
        .expect("HERMIT_KERNEL_DIR must name the directory of libhermit.a (use `make image`)");
    println!("cargo:rerun-if-changed={dir}/libhermit.a");
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rustc-link-lib=static=hermit");
}
