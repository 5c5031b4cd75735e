//! Gives the shared library the soname it is installed under (`liboxccl.so.0`), so that
//! programs linked with `-loxccl` load it by that name, whatever cargo named the file.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,liboxccl.so.0");
    println!("cargo:rerun-if-changed=build.rs");
}
