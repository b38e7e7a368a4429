//! `cargo run -p codegen [-- --check]`: regenerates `generated/` from `openapi/openapi.yaml`,
//! or, with `--check`, fails when `generated/` differs from what the spec produces.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut spec = root.join("openapi/openapi.yaml");
    let mut out = root.join("generated");
    let mut check = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--spec" => spec = args.next().map(PathBuf::from).unwrap_or(spec),
            "--out" => out = args.next().map(PathBuf::from).unwrap_or(out),
            "-h" | "--help" => {
                println!(
                    "usage: codegen [--check] [--spec openapi/openapi.yaml] [--out generated]"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("codegen: unknown argument {other:?} (see --help)");
                return ExitCode::from(2);
            }
        }
    }
    let files = match codegen::generate(&spec) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("codegen: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let drifted = codegen::drift(&files, &out);
    if check {
        if drifted.is_empty() {
            println!("codegen: generated/ is up to date ({} files)", files.len());
            return ExitCode::SUCCESS;
        }
        eprintln!("codegen: generated/ has drifted from openapi/; run `cargo run -p codegen`:");
        for path in drifted {
            eprintln!("  {}", path.display());
        }
        return ExitCode::FAILURE;
    }
    for path in &drifted {
        let full = out.join(path);
        match files.iter().find(|(p, _)| p == path) {
            Some((_, text)) => {
                if let Some(parent) = full.parent()
                    && let Err(e) = std::fs::create_dir_all(parent)
                {
                    eprintln!("codegen: cannot create {}: {e}", parent.display());
                    return ExitCode::FAILURE;
                }
                if let Err(e) = std::fs::write(&full, text) {
                    eprintln!("codegen: cannot write {}: {e}", full.display());
                    return ExitCode::FAILURE;
                }
                println!("codegen: wrote {}", path.display());
            }
            None => {
                if let Err(e) = std::fs::remove_file(&full) {
                    eprintln!("codegen: cannot remove stale {}: {e}", full.display());
                    return ExitCode::FAILURE;
                }
                println!("codegen: removed stale {}", path.display());
            }
        }
    }
    println!("codegen: {} files, {} changed", files.len(), drifted.len());
    ExitCode::SUCCESS
}
