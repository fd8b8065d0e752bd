fn main() -> std::process::ExitCode {
    zdm::cli::main()
}
