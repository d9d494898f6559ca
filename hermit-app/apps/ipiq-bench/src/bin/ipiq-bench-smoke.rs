//! The same measurements with small counts, so `make test` keeps every path of the benchmark
//! alive in seconds (`make guest-bench-smoke`). Its figures are too short to quote.

fn main() {
    ipiq_bench::main(&ipiq_bench::SMOKE);
}
