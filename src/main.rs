//! The `mairust` binary.

fn main() -> std::process::ExitCode {
    mairust::cli::main()
}
