//! With the `heif` feature, say clearly when libheif is missing instead of failing at link
//! time with "cannot find -lheif" (libheif-sys 1.14 links it without looking for it).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");
    if std::env::var_os("CARGO_FEATURE_HEIF").is_none() || std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("windows") {
        return;
    }
    match std::process::Command::new("pkg-config").args(["--atleast-version=1.14", "libheif"]).status() {
        Ok(s) if s.success() => {}
        Ok(_) => panic!(
            "HEIF support (the default `heif` feature) needs libheif >= 1.14 and its pkg-config file: \
             `apt-get install libheif-dev` (Debian/Ubuntu), `dnf install libheif-devel`, `brew install libheif`; \
             or build without HEIF: `MATURIN_PEP517_ARGS=\"--no-default-features\" pip install .` \
             (cargo: `--no-default-features`)"
        ),
        Err(_) => println!("cargo:warning=pkg-config not found: cannot check for libheif (the `heif` feature links -lheif)"),
    }
}
