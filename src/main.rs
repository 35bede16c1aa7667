/// jemalloc: fewer cycles per allocation on the request path and less memory per idle
/// connection than the system allocator (figures in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    obm_gate::cli::main()
}
