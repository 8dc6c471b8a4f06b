//! Links the guest image at 2 MiB with our own linker script.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
    // A plain static executable: the VMM loads PT_LOAD segments at p_paddr and
    // applies no relocations, so nothing may be left for a dynamic loader.
    println!("cargo:rustc-link-arg-bins=--no-pie");
}
