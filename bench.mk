# ipiq host benchmarks (issue 5): ipiq against crossbeam-channel, std mpsc, Mutex<VecDeque>, a
# Linux-style llist and a bare SPSC ring, all in one run. Included from the Makefile.
#
#   make -f bench.mk bench        full run (a few minutes); tables on stdout, report and SVG
#                                 plots in results/bench-report.md
#   make -f bench.mk bench-smoke  every case with tiny counts (seconds), to keep the bench building
#
# Guest comparisons of the ipiq kernel with stock (the stock-probe kernel: stock + counters), under
# QEMU; logs and <<<report tables in results/guest-logs/:
#   make guest-wakeup      cross-core wake-up ping-pong (apps/wakeup) at WAKEUP_SMP vCPUs
#   make wakeup-smoke      the same with WAKEUP_SMOKE_ROUNDS round trips, one boot per kernel (make test)
#   make guest-tlb-stale   stale-TLB experiment (apps/tlb-stale), 2/4/8 vCPUs, x2APIC and xAPIC

CARGO ?= cargo
BENCH_MK_DIR := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
BENCH_IMAGE_MK := $(BENCH_MK_DIR)/hermit-app/image.mk
GUEST_LOGS ?= $(BENCH_MK_DIR)/results/guest-logs
WAKEUP_SMP ?= 2 4
# Round trips per primitive (empty: the app's default, 2000).
WAKEUP_ROUNDS ?= 2000
WAKEUP_SMOKE_ROUNDS ?= 200
# Boots per kernel and vCPU count (medians reported; emulated time follows the host's load).
WAKEUP_REPEATS ?= 3
WAKEUP_TIMEOUT ?= 300
BENCH_LOADER = $(or $(LOADER),$(BENCH_MK_DIR)/hermit-app/build/loader/x86_64-unknown-none/release/ipiq-loader)
BENCH_APP_IMAGE = $(BENCH_MK_DIR)/hermit-app/build/kernel-$(1)/apps/x86_64-unknown-hermit/release/$(2)

.PHONY: bench bench-smoke guest-wakeup wakeup-smoke wakeup-images guest-tlb-stale

## bench: host benchmarks against peers; writes results/bench-report.md
bench:
	$(CARGO) bench --features std --bench ipiq_bench

## bench-smoke: every bench case with tiny counts (IPIQ_BENCH_SMOKE=1)
bench-smoke:
	IPIQ_BENCH_SMOKE=1 $(CARGO) bench --features std --bench ipiq_bench

# The wakeup app for both kernels, the loader and QEMU.
wakeup-images:
	@for k in patched stock-probe; do \
		$(MAKE) --no-print-directory -f $(BENCH_IMAGE_MK) KERNEL=$$k APP=wakeup image || exit 1; \
	done
	@$(MAKE) --no-print-directory -f $(BENCH_IMAGE_MK) loader qemu-install

## guest-wakeup: wake-up ping-pong, ipiq kernel against stock at WAKEUP_SMP vCPUs; side-by-side
## table in results/guest-logs/wakeup-summary.log, boots in results/guest-logs/wakeup-KERNEL-SMP.log
guest-wakeup: wakeup-images
	@mkdir -p $(GUEST_LOGS)
	REPEATS=$(WAKEUP_REPEATS) SUMMARY=$(GUEST_LOGS)/wakeup-summary.log $(BENCH_MK_DIR)/hermit-app/scripts/wakeup.sh $(BENCH_LOADER) $(GUEST_LOGS) \
		$(WAKEUP_TIMEOUT) "$(WAKEUP_SMP)" "$(WAKEUP_ROUNDS)" \
		patched=$(call BENCH_APP_IMAGE,patched,wakeup) stock-probe=$(call BENCH_APP_IMAGE,stock-probe,wakeup)

## wakeup-smoke: the same, WAKEUP_SMOKE_ROUNDS round trips, 2 vCPUs, one boot per kernel
wakeup-smoke: wakeup-images
	$(BENCH_MK_DIR)/hermit-app/scripts/wakeup.sh $(BENCH_LOADER) $(BENCH_MK_DIR)/hermit-app/build/wakeup-smoke-logs \
		$(WAKEUP_TIMEOUT) 2 "$(WAKEUP_SMOKE_ROUNDS)" \
		patched=$(call BENCH_APP_IMAGE,patched,wakeup) stock-probe=$(call BENCH_APP_IMAGE,stock-probe,wakeup)

## guest-tlb-stale: stale-TLB experiment on the ipiq kernel and stock-probe, 2/4/8 vCPUs, x2APIC
## and xAPIC; table in results/guest-logs/tlb-stale-summary.log, boots in results/guest-logs/tlb-stale/
guest-tlb-stale:
	@mkdir -p $(GUEST_LOGS)
	SUMMARY=$(GUEST_LOGS)/tlb-stale-summary.log $(MAKE) --no-print-directory -f $(BENCH_IMAGE_MK) tlb-stale-test \
		TLB_STALE_KERNELS="patched stock-probe" TLB_STALE_SMP="2 4 8" TLB_STALE_MODES="x2APIC xAPIC" \
		TLB_STALE_LOGS=$(GUEST_LOGS)/tlb-stale
