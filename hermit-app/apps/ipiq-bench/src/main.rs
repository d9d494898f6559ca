//! The full in-guest benchmark (`make guest-bench SMP=n`, `make guest-bench-all`).

fn main() {
    ipiq_bench::main(&ipiq_bench::FULL);
}
