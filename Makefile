# ipiq: the front door.
#
#   make run    the dispatch demo: on simulated cores (host), then in the Hermit image booted
#               under QEMU with 4 cores (ipiq messages against std threads and channels)
#   make test   everything CI runs: host tests, loom models, the no_std kernel-target build,
#               lints, docs, a smoke run of every benchmark, `git am` of the kernel patch
#               series (kernel-series-check), then the Hermit images under QEMU
#               (1/2/4/8 vCPUs, x2APIC and xAPIC), the FPU test (fpu-test: application
#               messages computing with f64/x87/AVX, 2 and 4 vCPUs, x2APIC, xAPIC and an AVX
#               model), the hang debugger's self-test (qemu-debug-test), the lock-order fault
#               injection (lock-inject-test), and smoke runs of the comparisons with the stock
#               kernel (tlb-stale-test, wakeup-smoke)
#   make bench  every benchmark (host against peers, then the guest ones); one report in
#               results/report.md (make bench-host: the host part alone)
#   make guest-bench SMP=8   in-guest measurements under QEMU (guest-bench-all: 2, 4, 8 vCPUs)
#   make guest-rayon         rayon workloads on the patched and the stock kernel, 1/2/4/8 vCPUs
#   make guest-wakeup        wake-up ping-pong, ipiq kernel against stock (bench.mk)
#   make guest-tlb-stale     stale-TLB experiment, ipiq kernel against stock (bench.mk)
#
# The image pipeline (kernel, loader, apps, QEMU, uhyve) lives in hermit-app/image.mk; its
# variables (KERNEL=stock, SMP, CPU, MEM, LOADER, APP, ...) work here too.

include hermit-app/image.mk
include bench.mk

CARGO ?= cargo
# loom's preemption bound per model is set in tests/loom.rs; this overrides it when set.
LOOM_MAX_PREEMPTIONS ?=

.PHONY: run run-host test test-host test-flood test-dispatch guest-bench guest-bench-smoke guest-bench-all guest-bench-run loom check-kernel-target lint doc ci-tools

## run: the dispatch demo on the host, then in the Hermit image with 4 cores
run: run-host
	$(MAKE) --no-print-directory qemu APP=dispatch SMP=4

## run-host: cross-core work dispatch over simulated cores (host platform)
run-host:
	$(CARGO) run --release --features std --example dispatch

## test: the whole suite (what .ci/run runs)
test: lint test-host test-flood loom check-kernel-target doc bench-smoke kernel-series-check boot-args-test image-test fpu-test qemu-debug-test lock-inject-test test-dispatch guest-rayon-smoke tlb-stale-test wakeup-smoke
	$(MAKE) --no-print-directory guest-bench-smoke

## test-host: unit tests, invariant tests I1-I7, bad input, stalls (watchdogs, shootdown
## policy, cpusync holds), defects found by review, multicast wake-ups (one platform call,
## exact IPI and ICR-write counts), doctests (host platform), and the
## invariants under arbitrary preemption (tests/preempt.rs: IPIs and ticks as POSIX signals);
## the xtask's own unit tests (its log checks, archive export rules, command lines)
test-host:
	$(CARGO) test --release --features std --lib --test invariants --test bad_input --test stalls --test defects --test multicast
	$(CARGO) test --release --features std --test preempt -- --test-threads 1
	$(CARGO) test --release --features std --doc
	$(CARGO) test --release -p ipiq-abi
	$(CARGO) test --manifest-path xtask/Cargo.toml

## test-flood: 10^6+ messages all-to-all through 4-slot FIFOs, then with lost and late IPIs
test-flood:
	$(CARGO) test --release --features std --test flood -- --test-threads 1 --nocapture

## test-dispatch: the in-guest dispatch demo (exits non-zero unless ipiq and threads agree)
test-dispatch:
	$(MAKE) --no-print-directory qemu APP=dispatch SMP=4
	$(MAKE) --no-print-directory qemu APP=dispatch SMP=2 CPU=qemu64,+fsgsbase

# The in-guest benchmark app builds two binaries: ipiq-bench (the figures) and ipiq-bench-smoke
# (the same paths with small counts, for `make test`). Each boot's log: results/guest-logs/.
GUEST_BENCH_BIN      = $(IMAGE_KERNEL_DIR)/apps/x86_64-unknown-hermit/release
GUEST_BENCH_LOGS    := results/guest-logs
GUEST_BENCH_SMPS    ?= 2 4 8
GUEST_BENCH_TIMEOUT ?= 600

## guest-bench: in-guest measurements with SMP vCPUs (streaming, passive, round trip against a
## raw IPI, ranged against full shootdown, statistics on/off, multicast); log in
## results/guest-logs/ipiq-bench-SMP.log; APP_ARGS=round-trip,statistics runs only those sections,
## REPEATABLE=1 boots with QEMU's instruction counting (hermit-app/image.mk)
guest-bench:
	@$(MAKE) --no-print-directory guest-bench-run GUEST_BENCH_NAME=ipiq-bench SMP=$(SMP)

## guest-bench-smoke: the same with small counts at 2 vCPUs, in seconds (part of `make test`)
guest-bench-smoke:
	@$(MAKE) --no-print-directory guest-bench-run GUEST_BENCH_NAME=ipiq-bench-smoke SMP=2

## guest-bench-all: guest-bench with 2, 4 and 8 vCPUs (GUEST_BENCH_SMPS)
guest-bench-all:
	@for n in $(GUEST_BENCH_SMPS); do $(MAKE) --no-print-directory guest-bench SMP=$$n || exit 1; done

guest-bench-run:
	@$(MAKE) --no-print-directory image $(IMAGE_LOADER_DEP) qemu-install APP=ipiq-bench
	@mkdir -p $(GUEST_BENCH_LOGS)
	@echo "==> booting $(GUEST_BENCH_NAME) under QEMU: $(SMP) cores, cpu $(CPU); log $(GUEST_BENCH_LOGS)/$(GUEST_BENCH_NAME)-$(SMP).log"
	@bash -o pipefail -c '$(IMAGE_XTASK) qemu --loader $(LOADER) --image $(GUEST_BENCH_BIN)/$(GUEST_BENCH_NAME) --smp "$(SMP)" --cpu "$(CPU)" \
		--mem "$(MEM)" --timeout "$(GUEST_BENCH_TIMEOUT)" --append "$(APP_ARGS)" 2>&1 | tee $(GUEST_BENCH_LOGS)/$(GUEST_BENCH_NAME)-$(SMP).log'

## loom: model checks of the npoll handshake, FIFO-full progress, cpusync and the kernel's idle
## loop against lazy and active senders
loom:
	RUSTFLAGS="--cfg ipiq_loom" $(if $(LOOM_MAX_PREEMPTIONS),LOOM_MAX_PREEMPTIONS=$(LOOM_MAX_PREEMPTIONS)) \
		CARGO_TARGET_DIR=target/loom $(CARGO) test --release --features loom --test loom

## check-kernel-target: the crate without std, built as the kernel builds it
check-kernel-target: hermit-toolchain
	@echo "==> building ipiq for x86_64-unknown-none with $(HERMIT_TOOLCHAIN) (as the kernel does)"
	env -u RUSTFLAGS -u CARGO_BUILD_TARGET -u RUSTUP_TOOLCHAIN CARGO_TARGET_DIR=target/kernel-target \
		CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback \
		cargo +$(HERMIT_TOOLCHAIN) build --release --target x86_64-unknown-none \
		-Zbuild-std=core,alloc -Zbuild-std-features=compiler-builtins-mem

## lint: rustfmt and clippy (the crate, ipiq-abi, the xtask), warnings are errors
lint: ci-tools
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --features std --all-targets -- -D warnings
	$(CARGO) fmt --manifest-path xtask/Cargo.toml --check
	$(CARGO) clippy --manifest-path xtask/Cargo.toml --all-targets -- -D warnings

## doc: rustdoc without warnings
doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --features std --no-deps

ci-tools:
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
