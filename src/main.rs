fn main() -> std::process::ExitCode {
    obm_gate::cli::main()
}
