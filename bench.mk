# ipiq host benchmarks (issue 5): ipiq against crossbeam-channel, std mpsc, Mutex<VecDeque>, a
# Linux-style llist and a bare SPSC ring, all in one run. Included from the Makefile.
#
#   make -f bench.mk bench        full run (a few minutes); tables on stdout, report and SVG
#                                 plots in results/bench-report.md
#   make -f bench.mk bench-smoke  every case with tiny counts (seconds), to keep the bench building

CARGO ?= cargo

.PHONY: bench bench-smoke

## bench: host benchmarks against peers; writes results/bench-report.md
bench:
	$(CARGO) bench --features std --bench ipiq_bench

## bench-smoke: every bench case with tiny counts (IPIQ_BENCH_SMOKE=1)
bench-smoke:
	IPIQ_BENCH_SMOKE=1 $(CARGO) bench --features std --bench ipiq_bench
