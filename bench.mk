# ipiq host benchmarks (issue 5): ipiq against crossbeam-channel, std mpsc, Mutex<VecDeque>, a
# Linux-style llist, a bare SPSC ring and that ring plus one SeqCst fence per message or per batch
# (the wake-up protocol's limit), a raw ping-pong with and without that fence, all in one run. The bench is benches/ipiq_bench/ (peers/,
# cases/, main.rs wiring them); its targets are data, benches/targets.csv. Included from the
# Makefile.
#
#   make bench        everything below (host and guest, ~10 min on an idle 2-core machine), then
#                     one report with every table: results/report.md (plots beside it)
#   make bench-host   host benchmarks only (~20 s idle): tables on stdout; in results/ (or
#                     $IPIQ_BENCH_OUT) the report bench-report.md (every figure a median with its
#                     min-max, every target met or not), the figures as CSV (bench-figures.csv,
#                     bench-runs.csv, bench-latency.csv, bench-targets.csv, bench-meta.csv) and
#                     SVG plots drawn with plotters; IPIQ_BENCH_CASES=prefix,prefix runs only
#                     the cases whose id starts with one of them (e.g. stream.ring,rt.)
#   make bench-smoke  every host case with tiny counts (seconds), after the bench's self-checks
#                     of its CSV and targets-file code; checks benches/targets.csv against the
#                     case ids; writes to results/smoke/ (part of make test)
#   make bench-compare [BEFORE=HEAD] [AFTER=worktree] [ROUNDS=8] [CASES=prefix,prefix]
#                     the host benchmarks at two git revisions (AFTER=worktree: the working
#                     tree with its uncommitted changes), each built in its own copy under
#                     target/host-compare/, run alternately in ROUNDS rounds that start only on a
#                     quiet machine (1-minute load below 1.5, at most 2 runnable tasks; waits up
#                     to an hour); rates and p50s with their ratios to each run's own baselines,
#                     median (min-max) over the rounds: results/host-compare/host-compare.md with
#                     every run's files beside it (cargo xtask host-compare, which takes
#                     --max-load, --deadline-s and --out too)
#
# Guest benchmarks on code no one here wrote (need hermit-app/image.mk: run them from the top
# Makefile):
#   make guest-rayon        rayon-work (rayon's par_sort_unstable and a Jacobi stencil) on the
#                           patched and the stock kernel with 1, 2, 4, 8 vCPUs under QEMU TCG
#                           (~3 min here); logs results/guest-logs/rayon-<kernel>-<smp>.log, one
#                           summary table (results/guest-logs/rayon-summary.md) and the gathered
#                           report results/guest-rayon-report.md
#   make guest-rayon-smoke  the same with 10^5 elements and a 128x128 grid, one boot per kernel
#                           at 2 vCPUs, then the report gatherer on them (part of make test)
#
#   make guest-wakeup       cross-core wake-up ping-pong (apps/wakeup), ipiq kernel against stock
#                           (stock-probe: stock + IPI counters) at WAKEUP_SMP vCPUs, medians of
#                           WAKEUP_REPEATS boots; logs results/guest-logs/wakeup-<kernel>-<smp>.log,
#                           side-by-side table results/guest-logs/wakeup-summary.log
#   make wakeup-smoke       the same, WAKEUP_SMOKE_ROUNDS round trips, one boot per kernel (make test)
#   make guest-tlb-stale    stale-TLB experiment (apps/tlb-stale) on both kernels, 2/4/8 vCPUs,
#                           x2APIC and xAPIC; boots in results/guest-logs/tlb-stale/, table
#                           results/guest-logs/tlb-stale-summary.log
#   make guest-shootdown    the shootdown's cost (apps/tlb-stale `rate`: swaps back to back under a
#                           reader, the other cores idle then spinning), ipiq against stock-probe at
#                           SHOOTDOWN_SMP vCPUs, SHOOTDOWN_REPEATS alternating boots each; table
#                           results/guest-logs/shootdown-summary.log
#   make guest-spread       the headline guest ratios (ipiq-bench: round trip against the raw ICR
#                           ping-pong, statistics off against on, at SPREAD_SMP vCPUs; wakeup: ipiq
#                           kernel against stock at SPREAD_WAKEUP_SMP) SPREAD_RUNS times each, with
#                           their spread across runs (cargo xtask spread); table and boots in
#                           results/guest-logs/spread (spread-repeatable with REPEATABLE=1);
#                           SPREAD_PHASES="0 1 2 3 4" with REPEATABLE=1: one run per ICOUNT_PHASE
#
# REPEATABLE=1 (hermit-app/image.mk) makes every guest target here boot with QEMU's instruction
# counting (-icount shift=ICOUNT_SHIFT,sleep=off, single-threaded TCG, one instruction per
# translation block, the RTC on virtual time): emulated time is then guest instructions and
# every boot repeats exactly whatever the host's load (three runs: identical logs, spread 0.0% for
# every headline ratio, docs/results/2026-12-07-repeatable.md), at 2-10x the wall time. The
# figures measure instruction paths under round-robin vCPUs, not time on parallel cores: they
# differ from the normal mode's and are compared only within the mode; some depend on the
# starting phase (ICOUNT_PHASE), so take those over several phases.

CARGO ?= cargo
RAYON_KERNELS ?= patched stock
RAYON_SMP     ?= 1 2 4 8
RAYON_MEM     ?= 512M
RAYON_TIMEOUT ?= 300
GUEST_LOGS    ?= results/guest-logs
RAYON_IMAGES   = $(foreach k,$(RAYON_KERNELS),$(k)=$(IMAGE_BUILD)/kernel-$(k)/apps/x86_64-unknown-hermit/release/rayon-work)

WAKEUP_SMP          ?= 2 4
# Round trips per primitive (empty: the app's default, 2000).
WAKEUP_ROUNDS       ?= 2000
WAKEUP_SMOKE_ROUNDS ?= 200
# Boots per kernel and vCPU count (medians reported; emulated time follows the host's load).
WAKEUP_REPEATS      ?= 3
WAKEUP_TIMEOUT      ?= 300
WAKEUP_IMAGES        = $(foreach k,patched stock-probe,$(k)=$(IMAGE_BUILD)/kernel-$(k)/apps/x86_64-unknown-hermit/release/wakeup)

SHOOTDOWN_SMP     ?= 2 4 8
SHOOTDOWN_SWAPS   ?= 200
SHOOTDOWN_REPEATS ?= 3
SHOOTDOWN_TIMEOUT ?= 300
SHOOTDOWN_IMAGES   = $(foreach k,patched stock-probe,$(k)=$(IMAGE_BUILD)/kernel-$(k)/apps/x86_64-unknown-hermit/release/tlb-stale)

# guest-bill: the hypervisor bill (cargo xtask bill), in the repeatable mode unless BILL_REPEATABLE=0.
BILL_REPEATABLE    ?= 1
BILL_WAKEUP_SMP    ?= 2 4
BILL_WAKEUP_ROUNDS ?= 500
BILL_SHOOTDOWN_SMP ?= 2 4
BILL_SWAPS         ?= 100
BILL_RAYON_SMP     ?= 4 8
BILL_RAYON_ARGS    ?= smoke
# Seconds per boot.
BILL_TIMEOUT       ?= 900
BILL_OUT           ?= $(GUEST_LOGS)/bill$(if $(filter-out 0,$(BILL_REPEATABLE)),-repeatable)
BILL_IMAGES         = $(foreach a,wakeup=wakeup shootdown=tlb-stale rayon=rayon-work,$(foreach k,patched stock-probe,\
	$(firstword $(subst =, ,$(a))).$(k)=$(IMAGE_BUILD)/kernel-$(k)/apps/x86_64-unknown-hermit/release/$(lastword $(subst =, ,$(a)))))

SPREAD_RUNS          ?= 3
SPREAD_SMP           ?= 2 4
SPREAD_WAKEUP_SMP    ?= 2 4
SPREAD_WAKEUP_ROUNDS ?= $(WAKEUP_ROUNDS)
# REPEATABLE=1 only: one run per phase (ICOUNT_PHASE) instead of SPREAD_RUNS identical runs.
SPREAD_PHASES        ?=
SPREAD_OUT           ?= $(GUEST_LOGS)/spread$(if $(filter-out 0,$(REPEATABLE)),-repeatable$(if $(SPREAD_PHASES),-phases))

.PHONY: guest-shootdown shootdown-images
.PHONY: bench bench-host bench-smoke bench-compare guest-bill bill-images guest-rayon guest-rayon-smoke rayon-images guest-wakeup wakeup-smoke wakeup-images guest-tlb-stale guest-spread

## bench: every benchmark, host and guest, gathered into results/report.md (~10 min here)
bench: bench-host guest-bench-all guest-wakeup guest-tlb-stale guest-shootdown guest-rayon guest-bill
	@$(IMAGE_XTASK) report bench --results results \
		$(foreach n,$(GUEST_BENCH_SMPS),$(GUEST_LOGS)/ipiq-bench-$(n).log) \
		$(GUEST_LOGS)/wakeup-summary.log $(GUEST_LOGS)/tlb-stale-summary.log \
		$(GUEST_LOGS)/shootdown-summary.log \
		$(GUEST_LOGS)/rayon-summary.md $(BILL_OUT)/bill.md

## bench-host: host benchmarks against peers; writes results/bench-report.md and the CSV and SVG
## files beside it
bench-host:
	$(CARGO) bench --features std --bench ipiq_bench

## bench-smoke: every bench case with tiny counts (IPIQ_BENCH_SMOKE=1), the bench's self-checks
## and the targets file's check; fails if any of them fails
bench-smoke:
	IPIQ_BENCH_SMOKE=1 $(CARGO) bench --features std --bench ipiq_bench

# bench-compare: the revisions to compare, rounds, and the case-id prefixes (empty: every case).
BEFORE ?= HEAD
AFTER  ?= worktree
ROUNDS ?= 8
CASES  ?=

## bench-compare: the host benchmarks at BEFORE and AFTER, run alternately on a quiet machine;
## table in results/host-compare/host-compare.md
bench-compare:
	@$(IMAGE_XTASK) host-compare --before '$(BEFORE)' --after '$(AFTER)' --rounds '$(ROUNDS)' $(if $(strip $(CASES)),--cases '$(CASES)')

rayon-images:
	@for k in $(RAYON_KERNELS); do \
		$(MAKE) --no-print-directory -f $(IMAGE_MK) image APP=rayon-work KERNEL=$$k || exit 1; \
	done

## guest-rayon: rayon-work on each kernel with 1, 2, 4, 8 vCPUs; logs, summary and report in results/
guest-rayon: rayon-images $(IMAGE_LOADER_DEP) qemu-install
	@echo "==> QEMU TCG on $$(nproc) host cores: past $$(nproc) vCPUs the vCPUs share host cores, so time scaling there is not meaningful"
	@$(IMAGE_XTASK) rayon --loader $(LOADER) --cpu '$(CPU)' --mem '$(RAYON_MEM)' --timeout '$(RAYON_TIMEOUT)' --logs $(GUEST_LOGS) --prefix rayon \
		--smp '$(RAYON_SMP)' $(addprefix --image ,$(RAYON_IMAGES))
	@$(IMAGE_XTASK) report gather --out results/guest-rayon-report.md \
		$(foreach k,$(RAYON_KERNELS),$(foreach n,$(RAYON_SMP),$(GUEST_LOGS)/rayon-$(k)-$(n).log)) \
		$(GUEST_LOGS)/rayon-summary.md

## guest-rayon-smoke: rayon-work with tiny sizes, one boot per kernel at 2 vCPUs, and the report
## gatherer on those two (make test; its checks on made-up logs are xtask unit tests, make test-host)
guest-rayon-smoke: rayon-images $(IMAGE_LOADER_DEP) qemu-install
	@$(IMAGE_XTASK) rayon --loader $(LOADER) --cpu '$(CPU)' --mem '$(RAYON_MEM)' --timeout 120 --logs $(IMAGE_BUILD)/test-logs --prefix rayon-smoke \
		--smp 2 --args smoke $(addprefix --image ,$(RAYON_IMAGES))
	@$(IMAGE_XTASK) report gather --out $(IMAGE_BUILD)/test-logs/rayon-smoke-report.md \
		$(foreach k,$(RAYON_KERNELS),$(IMAGE_BUILD)/test-logs/rayon-smoke-$(k)-2.log)

wakeup-images:
	@for k in patched stock-probe; do \
		$(MAKE) --no-print-directory -f $(IMAGE_MK) image APP=wakeup KERNEL=$$k || exit 1; \
	done

## guest-wakeup: wake-up ping-pong, ipiq kernel against stock at WAKEUP_SMP vCPUs; side-by-side
## table in results/guest-logs/wakeup-summary.log, boots in results/guest-logs/wakeup-KERNEL-SMP.log
guest-wakeup: wakeup-images $(IMAGE_LOADER_DEP) qemu-install
	@mkdir -p $(GUEST_LOGS)
	@$(IMAGE_XTASK) wakeup --loader $(LOADER) --logs $(GUEST_LOGS) --timeout "$(WAKEUP_TIMEOUT)" --smp "$(WAKEUP_SMP)" --rounds "$(WAKEUP_ROUNDS)" --repeats "$(WAKEUP_REPEATS)" --summary $(GUEST_LOGS)/wakeup-summary.log $(addprefix --image ,$(WAKEUP_IMAGES))

## wakeup-smoke: the same, WAKEUP_SMOKE_ROUNDS round trips, 2 vCPUs, one boot per kernel, and
## the hypervisor bill of both boots (cargo xtask report bill fails without both kernels' lines) (make test)
wakeup-smoke: wakeup-images $(IMAGE_LOADER_DEP) qemu-install
	@$(IMAGE_XTASK) wakeup --loader $(LOADER) --logs $(IMAGE_BUILD)/test-logs/wakeup-smoke --timeout "$(WAKEUP_TIMEOUT)" --smp 2 --rounds "$(WAKEUP_SMOKE_ROUNDS)" $(addprefix --image ,$(WAKEUP_IMAGES))
	@$(IMAGE_XTASK) report bill $(foreach k,patched stock-probe,$(IMAGE_BUILD)/test-logs/wakeup-smoke/wakeup-$(k)-2.log)

## guest-tlb-stale: stale-TLB experiment on the ipiq kernel and stock-probe, 2/4/8 vCPUs, x2APIC
## and xAPIC; table in results/guest-logs/tlb-stale-summary.log, boots in results/guest-logs/tlb-stale/
guest-tlb-stale:
	@mkdir -p $(GUEST_LOGS)
	@$(MAKE) --no-print-directory -f $(IMAGE_MK) tlb-stale-test TLB_STALE_SUMMARY=$(GUEST_LOGS)/tlb-stale-summary.log \
		TLB_STALE_KERNELS="patched stock-probe" TLB_STALE_SMP="2 4 8" TLB_STALE_MODES="x2APIC xAPIC" \
		TLB_STALE_LOGS=$(abspath $(GUEST_LOGS))/tlb-stale

shootdown-images:
	@for k in patched stock-probe; do \
		$(MAKE) --no-print-directory -f $(IMAGE_MK) image APP=tlb-stale KERNEL=$$k || exit 1; \
	done

## guest-shootdown: the shootdown's cost, ipiq kernel against stock-probe at SHOOTDOWN_SMP vCPUs
## (swaps/s under a reader, other cores idle then busy, IPIs per swap, stale reads); table in
## results/guest-logs/shootdown-summary.log, boots in results/guest-logs/shootdown/
guest-shootdown: shootdown-images $(IMAGE_LOADER_DEP) qemu-install
	@mkdir -p $(GUEST_LOGS)
	@$(IMAGE_XTASK) shootdown --loader $(LOADER) --logs $(GUEST_LOGS)/shootdown --timeout "$(SHOOTDOWN_TIMEOUT)" --smp "$(SHOOTDOWN_SMP)" --swaps "$(SHOOTDOWN_SWAPS)" \
		--repeats "$(SHOOTDOWN_REPEATS)" --summary $(GUEST_LOGS)/shootdown-summary.log $(addprefix --image ,$(SHOOTDOWN_IMAGES))

bill-images:
	@for a in wakeup tlb-stale rayon-work; do for k in patched stock-probe; do \
		$(MAKE) --no-print-directory -f $(IMAGE_MK) image APP=$$a KERNEL=$$k || exit 1; \
	done; done

## guest-bill: the hypervisor bill, ipiq kernel against stock-probe: events that cost a VM exit
## (ICR, EOI, timer writes, halts) per wake-up hand-off, per swap under a reader, per rayon run,
## counted in the repeatable mode (BILL_REPEATABLE=0: normal); table in BILL_OUT/bill.md
guest-bill: bill-images $(IMAGE_LOADER_DEP) qemu-install
	@$(if $(filter-out 0,$(BILL_REPEATABLE)),QEMU_ICOUNT_SHIFT=$(ICOUNT_SHIFT) QEMU_ICOUNT_PHASE=$(ICOUNT_PHASE)) $(IMAGE_XTASK) bill --loader $(LOADER) --out $(BILL_OUT) --wakeup-smp "$(BILL_WAKEUP_SMP)" --wakeup-rounds "$(BILL_WAKEUP_ROUNDS)" --shootdown-smp "$(BILL_SHOOTDOWN_SMP)" --swaps "$(BILL_SWAPS)" --rayon-smp "$(BILL_RAYON_SMP)" --rayon-args "$(BILL_RAYON_ARGS)" --timeout "$(BILL_TIMEOUT)" $(addprefix --image ,$(BILL_IMAGES))

## guest-spread: the headline guest ratios SPREAD_RUNS times with their spread across runs (add
## REPEATABLE=1 for the instruction-counting mode); table in SPREAD_OUT/spread.md
guest-spread: wakeup-images $(IMAGE_LOADER_DEP) qemu-install
	@$(MAKE) --no-print-directory -f $(IMAGE_MK) image APP=ipiq-bench KERNEL=patched
	@$(IMAGE_XTASK) spread --loader $(LOADER) --out $(SPREAD_OUT) --runs "$(SPREAD_RUNS)" --smp "$(SPREAD_SMP)" --wakeup-smp "$(SPREAD_WAKEUP_SMP)" --wakeup-rounds "$(SPREAD_WAKEUP_ROUNDS)" --phases "$(SPREAD_PHASES)" \
		--image bench=$(IMAGE_BUILD)/kernel-patched/apps/x86_64-unknown-hermit/release/ipiq-bench $(addprefix --image ,$(WAKEUP_IMAGES))
