# ipiq host benchmarks (issue 5): ipiq against crossbeam-channel, std mpsc, Mutex<VecDeque>, a
# Linux-style llist and a bare SPSC ring, all in one run. Included from the Makefile.
#
#   make -f bench.mk bench        full run (a few minutes); tables on stdout, report and SVG
#                                 plots in results/bench-report.md
#   make -f bench.mk bench-smoke  every case with tiny counts (seconds), to keep the bench building
#
# Guest benchmarks on code no one here wrote (need hermit-app/image.mk: run them from the top
# Makefile):
#   make guest-rayon        rayon-work (rayon's par_sort_unstable and a Jacobi stencil) on the
#                           patched and the stock kernel with 1, 2, 4, 8 vCPUs under QEMU TCG
#                           (~3 min here); logs results/guest-logs/rayon-<kernel>-<smp>.log, one
#                           summary table (results/guest-logs/rayon-summary.md) and the gathered
#                           report results/guest-rayon-report.md
#   make guest-rayon-smoke  the same with 10^5 elements and a 128x128 grid, one boot per kernel
#                           at 2 vCPUs, plus scripts/test-guest-report.sh (part of make test)

CARGO ?= cargo
RAYON_KERNELS ?= patched stock
RAYON_SMP     ?= 1 2 4 8
RAYON_MEM     ?= 512M
RAYON_TIMEOUT ?= 300
GUEST_LOGS    ?= results/guest-logs
RAYON_IMAGES   = $(foreach k,$(RAYON_KERNELS),$(k)=$(IMAGE_BUILD)/kernel-$(k)/apps/x86_64-unknown-hermit/release/rayon-work)

.PHONY: bench bench-smoke guest-rayon guest-rayon-smoke rayon-images

## bench: host benchmarks against peers; writes results/bench-report.md
bench:
	$(CARGO) bench --features std --bench ipiq_bench

## bench-smoke: every bench case with tiny counts (IPIQ_BENCH_SMOKE=1)
bench-smoke:
	IPIQ_BENCH_SMOKE=1 $(CARGO) bench --features std --bench ipiq_bench

rayon-images:
	@for k in $(RAYON_KERNELS); do \
		$(MAKE) --no-print-directory -f $(IMAGE_MK) image APP=rayon-work KERNEL=$$k || exit 1; \
	done

## guest-rayon: rayon-work on each kernel with 1, 2, 4, 8 vCPUs; logs, summary and report in results/
guest-rayon: rayon-images $(IMAGE_LOADER_DEP) qemu-install
	@echo "==> QEMU TCG on $$(nproc) host cores: past $$(nproc) vCPUs the vCPUs share host cores, so time scaling there is not meaningful"
	@$(IMAGE_SCRIPTS)/guest-rayon.sh $(LOADER) $(CPU) $(RAYON_MEM) $(RAYON_TIMEOUT) $(GUEST_LOGS) rayon \
		"$(RAYON_SMP)" "" $(RAYON_IMAGES)
	@$(IMAGE_SCRIPTS)/guest-report.sh results/guest-rayon-report.md \
		$(foreach k,$(RAYON_KERNELS),$(foreach n,$(RAYON_SMP),$(GUEST_LOGS)/rayon-$(k)-$(n).log)) \
		$(GUEST_LOGS)/rayon-summary.md

## guest-rayon-smoke: rayon-work with tiny sizes, one boot per kernel at 2 vCPUs, and the report
## gatherer on made-up logs and on those two (make test)
guest-rayon-smoke: rayon-images $(IMAGE_LOADER_DEP) qemu-install
	@$(IMAGE_SCRIPTS)/test-guest-report.sh
	@$(IMAGE_SCRIPTS)/guest-rayon.sh $(LOADER) $(CPU) $(RAYON_MEM) 120 $(IMAGE_BUILD)/test-logs rayon-smoke \
		2 smoke $(RAYON_IMAGES)
	@$(IMAGE_SCRIPTS)/guest-report.sh $(IMAGE_BUILD)/test-logs/rayon-smoke-report.md \
		$(foreach k,$(RAYON_KERNELS),$(IMAGE_BUILD)/test-logs/rayon-smoke-$(k)-2.log)
