//! Build script: link settings for a module that nginx loads with `load_module`, and the C
//! accessors of `ngx_http_request_t`'s bitfields (`src/nginx/request_bits.c`), compiled
//! against the nginx tree the module is built for.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=NGINX_SOURCE_DIR");
    println!("cargo:rerun-if-env-changed=NGINX_BUILD_DIR");
    println!("cargo:rerun-if-changed=src/nginx/request_bits.c");
    let source = std::env::var_os("NGINX_SOURCE_DIR").map(PathBuf::from);
    let objs = std::env::var_os("NGINX_BUILD_DIR")
        .map(PathBuf::from)
        .or_else(|| source.as_ref().map(|s| s.join("objs")));
    match (source, objs) {
        (Some(source), Some(objs)) => compile_request_bits(&source, &objs),
        _ => println!(
            "cargo:warning=NGINX_SOURCE_DIR is not set: build with `make`, which prepares the \
             installed nginx's source (nginx-dev), or point NGINX_SOURCE_DIR at a configured \
             nginx source tree"
        ),
    }
    // nginx's symbols are resolved when nginx loads the module; on Linux an undefined symbol
    // in a shared object is allowed by default, macOS must be told.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos") {
        println!("cargo:rustc-cdylib-link-arg=-undefined");
        println!("cargo:rustc-cdylib-link-arg=dynamic_lookup");
    }
}

/// Compiles `request_bits.c` with nginx's own include directories and flags (read from the
/// tree's `objs/Makefile`) into a static library linked into the module.
fn compile_request_bits(source: &Path, objs: &Path) {
    let makefile = std::fs::read_to_string(objs.join("Makefile")).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (configure the nginx tree first)",
            objs.join("Makefile").display()
        )
    });
    // `NAME = value \` continued lines, as nginx's configure writes them.
    let variable = |name: &str| -> String {
        let mut out = String::new();
        let mut inside = false;
        for line in makefile.lines() {
            if !inside {
                let Some(rest) = line.strip_prefix(name) else {
                    continue;
                };
                let Some(value) = rest.trim_start().strip_prefix('=') else {
                    continue;
                };
                inside = true;
                out.push_str(value);
            } else {
                out.push(' ');
                out.push_str(line);
            }
            if !out.trim_end().ends_with('\\') {
                break;
            }
            out = out.trim_end().trim_end_matches('\\').to_string();
        }
        out
    };
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("request_bits.o");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let mut command = Command::new(&cc);
    command.current_dir(source);
    for flag in variable("CFLAGS").split_whitespace() {
        if flag != "-Werror" {
            command.arg(flag);
        }
    }
    // Include paths are relative to the source tree; `objs` may live elsewhere.
    for inc in variable("ALL_INCS")
        .split_whitespace()
        .filter(|a| *a != "-I")
    {
        let inc = inc.trim_start_matches("-I");
        if inc == "objs" {
            command.arg("-I").arg(objs);
        } else {
            command.arg("-I").arg(source.join(inc));
        }
    }
    let c_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/nginx/request_bits.c");
    command
        .arg("-fPIC")
        .arg("-c")
        .arg(&c_file)
        .arg("-o")
        .arg(&object);
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(status.success(), "compiling {} failed", c_file.display());
    let library = out_dir.join("libstale_cache_request_bits.a");
    let _ = std::fs::remove_file(&library);
    let status = Command::new("ar")
        .arg("crs")
        .arg(&library)
        .arg(&object)
        .status()
        .unwrap_or_else(|e| panic!("cannot run ar: {e}"));
    assert!(status.success(), "ar failed");
    println!("cargo:rustc-link-search=native={}", out_dir.display());
    println!("cargo:rustc-link-lib=static=stale_cache_request_bits");
}
