//! Build script: link settings for a module that nginx loads with `load_module`.

fn main() {
    println!("cargo:rerun-if-env-changed=NGINX_SOURCE_DIR");
    println!("cargo:rerun-if-env-changed=NGINX_BUILD_DIR");
    if std::env::var_os("NGINX_SOURCE_DIR").is_none()
        && std::env::var_os("NGINX_BUILD_DIR").is_none()
    {
        println!(
            "cargo:warning=NGINX_SOURCE_DIR is not set: build with `make`, which prepares the \
             installed nginx's source (nginx-dev), or point NGINX_SOURCE_DIR at a configured \
             nginx source tree"
        );
    }
    // nginx's symbols are resolved when nginx loads the module; on Linux an undefined symbol
    // in a shared object is allowed by default, macOS must be told.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos") {
        println!("cargo:rustc-cdylib-link-arg=-undefined");
        println!("cargo:rustc-cdylib-link-arg=dynamic_lookup");
    }
}
