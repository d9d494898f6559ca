# The Hermit image pipeline: kernel, loader, applications, QEMU and uhyve runs.
#
# Included by the top-level Makefile (`include hermit-app/image.mk`) or used on its own
# (`make -f hermit-app/image.mk image`). Every path below is derived from this file's own
# location, so both work from any directory. Each step is a call into the xtask (xtask/, `cargo
# xtask help`); what must run on a bare machine (installers, the bash runners, device-scaling.sh)
# lives in hermit-app/scripts/.
# See hermit-app/README-image.md for what each step does and how long it takes.
#
# Targets:  image loader qemu qemu-debug qemu-debug-test lock-inject-test uhyve image-test
#           kernel-tests tlb-stale-test fpu-test image-run image-clean kernel-series-check
#           kernel-series-repo
# Variables (make VAR=value):
#   KERNEL=patched|stock|stock-probe   kernel source with the series of hermit-app/kernel/patches/
#                          and the project's probes (kernel/probe-patches/), unpatched, or with
#                          only the test probes of kernel/stock-probe-patches/
#   APP=cores              application under hermit-app/apps/
#   APP_FEATURES=...       the application's cargo features; an app that declares the feature
#                          `ipiq-stats` (it reads ipiq's counters) gets it with KERNEL=patched only,
#                          one that declares `probe-stats` (stock-probe's counters) with
#                          KERNEL=stock-probe only
#   APP_ARGS=...           arguments for the application (qemu: passed after '--' on the command line)
#   SMP=4 CPU=... MEM=512M QEMU/uhyve guest shape (qemu, uhyve, image-run)
#   LOADER=path            multiboot loader for QEMU (default: the project's own, built here;
#                          Hermit's official hermit-loader-x86_64 works too)
#   KERNEL_FEATURES=...    hermit-kernel cargo features
#   QEMU_TIMEOUT=120 UHYVE_TIMEOUT=120   seconds before a run is killed
#   QEMU_DEBUG_TIMEOUT=60  qemu-debug: seconds before a guest that has not exited counts as hung
#                          and every vCPU's backtrace is printed
#   QEMU_EXTRA=...         extra QEMU arguments for qemu and qemu-debug (e.g. -accel tcg,thread=multi)
#   REPEATABLE=1           every boot through the xtask's runner, scripts/qemu.sh or qemu-debug.sh (qemu, qemu-debug,
#                          the guest-* benchmarks, the tests) runs with QEMU's instruction counting:
#                          -icount shift=ICOUNT_SHIFT,sleep=off -accel tcg,one-insn-per-tb=on and the
#                          RTC on virtual time from a fixed date; the runner also starts QEMU from a
#                          scratch folder of links (the guest's command line names the loader). Every
#                          boot then repeats exactly whatever the host's load, at several times the
#                          wall time (README-image.md, "Repeatable figures")
#   ICOUNT_SHIFT=0         REPEATABLE's ns per instruction, as a power of 2
#   ICOUNT_PHASE=0         REPEATABLE: start n x 8 command-line characters later (another
#                          deterministic sample; bench.mk's SPREAD_PHASES)
#   KERNEL_TESTS_KERNELS="patched stock" KERNEL_TESTS_SMP="1 4"   kernel-tests' sources and vCPUs
#   TLB_STALE_KERNELS=stock-probe TLB_STALE_SMP="2 4" TLB_STALE_MODES=x2APIC TLB_STALE_LOGS=...
#   TLB_STALE_SUMMARY=FILE tlb-stale-test's kernels, vCPU counts, APIC models, log folder and a
#                          file for its table (guest-tlb-stale sets it)
#   FPU_TEST_SMP="2 4" FPU_TEST_MODES="x2APIC xAPIC" FPU_TEST_AVX_MODELS=Skylake-Client
#   FPU_TEST_ARGS=... FPU_TEST_LOGS=...   fpu-test's vCPU counts, APIC models, AVX CPU models
#                          (2 vCPUs, AVX required), fpu-stress arguments and log folder

IMAGE_HERMIT_APP := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
IMAGE_SCRIPTS    := $(IMAGE_HERMIT_APP)/scripts
IMAGE_BUILD      := $(IMAGE_HERMIT_APP)/build
IMAGE_MK         := $(IMAGE_HERMIT_APP)/image.mk
IMAGE_XTASK_DIR  := $(patsubst %/,%,$(dir $(IMAGE_HERMIT_APP)))/xtask
# The build, boot and check tasks (xtask/: std only, built by the stable toolchain on first use).
# The outer build's settings are not passed on (make may run inside another cargo).
IMAGE_XTASK      := env -u RUSTFLAGS -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET cargo run --quiet \
	--manifest-path $(IMAGE_XTASK_DIR)/Cargo.toml --

HERMIT_TOOLCHAIN      ?= nightly-2025-03-15
HERMIT_KERNEL_VERSION ?= 0.11.0
UHYVE_VERSION         ?= 0.10.0
KERNEL          ?= patched
KERNEL_FEATURES ?= smp,acpi,fsgsbase,mmap
APP             ?= cores
SMP             ?= 4
CPU             ?= qemu64,+x2apic,+fsgsbase
MEM             ?= 512M
QEMU_TIMEOUT    ?= 120
QEMU_DEBUG_TIMEOUT ?= 60
QEMU_EXTRA      ?=
REPEATABLE      ?=
ICOUNT_SHIFT    ?= 0
ICOUNT_PHASE    ?= 0
# The runners (cargo xtask qemu, qemu.sh, qemu-debug.sh) read it from the environment, so every
# boot (the checks, the experiments, device-scaling.sh, ...) follows REPEATABLE without an
# argument of its own.
ifneq ($(filter-out 0,$(REPEATABLE)),)
export QEMU_ICOUNT_SHIFT := $(ICOUNT_SHIFT)
export QEMU_ICOUNT_PHASE := $(ICOUNT_PHASE)
endif
UHYVE_TIMEOUT   ?= 120
# vCPU counts the ipiq-tests application boots with in image-test.
IPIQ_TESTS_SMP  ?= 1 2 4 8
# kernel-tests: which kernel sources (patched, stock) and vCPU counts the package's tests run on.
KERNEL_TESTS_KERNELS ?= patched stock
KERNEL_TESTS_SMP     ?= 1 4
# tlb-stale-test: kernels (patched, stock-probe), vCPU counts, APIC models (x2APIC, xAPIC), logs.
TLB_STALE_KERNELS ?= stock-probe
TLB_STALE_SMP     ?= 2 4
TLB_STALE_MODES   ?= x2APIC
TLB_STALE_LOGS    ?= $(IMAGE_BUILD)/tlb-stale-logs
# Also write the table to this file (empty: stdout only).
TLB_STALE_SUMMARY ?=
# fpu-test: vCPU counts, APIC models, AVX CPU models (2 vCPUs, AVX required), app arguments, logs.
FPU_TEST_SMP        ?= 2 4
FPU_TEST_MODES      ?= x2APIC xAPIC
FPU_TEST_AVX_MODELS ?= Skylake-Client
FPU_TEST_ARGS       ?= ms=1500
FPU_TEST_LOGS       ?= $(IMAGE_BUILD)/fpu-test-logs

ifeq ($(filter $(KERNEL),patched stock stock-probe),)
$(error KERNEL must be 'patched', 'stock' or 'stock-probe', not '$(KERNEL)')
endif
IMAGE_APPS := $(filter-out common,$(notdir $(patsubst %/Cargo.toml,%,$(wildcard $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))/apps/*/Cargo.toml))))
ifeq ($(filter $(APP),$(IMAGE_APPS)),)
$(error APP must be one of: $(IMAGE_APPS) (hermit-app/apps/NAME), not '$(APP)')
endif

IMAGE_PRISTINE   := $(IMAGE_BUILD)/registry/hermit-kernel-$(HERMIT_KERNEL_VERSION)
IMAGE_KERNEL_DIR := $(IMAGE_BUILD)/kernel-$(KERNEL)
# Patch directories, applied in this order, each in the order of its `series` file. patched:
# the ipiq kernel series, then the project's test probes; stock-probe: stock plus test-only
# probes (a swap-pages syscall with stock's own TLB handling, IPI counters); both then get the
# same event probe (the hypervisor bill's counters); stock: none.
IMAGE_PATCH_DIRS := $(addprefix $(IMAGE_HERMIT_APP)/kernel/,$(if $(filter patched,$(KERNEL)),patches probe-patches event-probe-patches,$(if $(filter stock-probe,$(KERNEL)),stock-probe-patches event-probe-patches)))
IMAGE_PATCHES    := $(wildcard $(addsuffix /series,$(IMAGE_PATCH_DIRS)) $(addsuffix /*.patch,$(IMAGE_PATCH_DIRS)))
IMAGE_APP_DIR     = $(IMAGE_HERMIT_APP)/apps/$(APP)
APP_FEATURES     ?=
# `ipiq-stats` links the sys_ipiq_stats syscall, which only the patched kernel has;
# `probe-stats` links stock-probe's sys_probe_ipi_counts.
IMAGE_APP_FEATURES = $(strip $(APP_FEATURES) \
	$(if $(filter patched,$(KERNEL)),$(if $(shell grep -s '^ipiq-stats *=' $(IMAGE_APP_DIR)/Cargo.toml),ipiq-stats)) \
	$(if $(filter stock-probe,$(KERNEL)),$(if $(shell grep -s '^probe-stats *=' $(IMAGE_APP_DIR)/Cargo.toml),probe-stats)))
IMAGE             = $(IMAGE_KERNEL_DIR)/apps/x86_64-unknown-hermit/release/$(APP)
IPIQ_LOADER      := $(IMAGE_BUILD)/loader/x86_64-unknown-none/release/ipiq-loader
LOADER           ?= $(IPIQ_LOADER)
# Build the project's loader only when it is the one in use.
IMAGE_LOADER_DEP := $(if $(filter $(IPIQ_LOADER),$(LOADER)),loader)

.PHONY: image loader qemu qemu-debug qemu-debug-test lock-inject-test uhyve image-test kernel-tests tlb-stale-test fpu-test image-run image-clean
.PHONY: kernel-series-check kernel-series-repo
.PHONY: hermit-toolchain hermit-kernel qemu-install gdb-install image-force boot-args boot-args-test

## image: kernel archive (patched or stock) + application image
image: hermit-kernel
	@$(IMAGE_XTASK) build-app --toolchain $(HERMIT_TOOLCHAIN) --app-dir $(IMAGE_APP_DIR) --kernel-dir $(IMAGE_KERNEL_DIR) --target-dir $(IMAGE_KERNEL_DIR)/apps --features "$(IMAGE_APP_FEATURES)"
	@echo "==> image: $(IMAGE)"

hermit-toolchain:
	@$(IMAGE_SCRIPTS)/toolchain.sh nightly $(HERMIT_TOOLCHAIN)

# Pristine registry source, fetched once per kernel version.
$(IMAGE_PRISTINE)/.fetched: | hermit-toolchain
	@$(IMAGE_XTASK) fetch-kernel --toolchain $(HERMIT_TOOLCHAIN) --version $(HERMIT_KERNEL_VERSION) --dest $(IMAGE_PRISTINE)
	@touch $@

# The patch directories and files in use: rewritten only when they change, so removing a
# directory or a patch re-prepares.
$(IMAGE_KERNEL_DIR)/patches.list: image-force
	@mkdir -p $(@D)
	@echo '$(notdir $(IMAGE_PATCH_DIRS)): $(notdir $(IMAGE_PATCHES))' | cmp -s - $@ \
		|| echo '$(notdir $(IMAGE_PATCH_DIRS)): $(notdir $(IMAGE_PATCHES))' >$@

# Kernel source for this variant: a fresh copy with each directory's series applied in order
# (a patch missing from its `series`, or a name there without its file, stops here).
$(IMAGE_KERNEL_DIR)/.prepared: $(IMAGE_PRISTINE)/.fetched $(IMAGE_KERNEL_DIR)/patches.list $(IMAGE_PATCHES) $(IMAGE_XTASK_DIR)/src/kernel.rs $(IMAGE_XTASK_DIR)/src/series.rs
	@echo "==> preparing $(KERNEL) kernel source ($(if $(IMAGE_PATCH_DIRS),series of $(notdir $(IMAGE_PATCH_DIRS)),no patches))"
	@$(IMAGE_XTASK) prepare-kernel --pristine $(IMAGE_PRISTINE) --src $(IMAGE_KERNEL_DIR)/src $(addprefix --patch-dir ,$(IMAGE_PATCH_DIRS))
	@touch $@

## kernel-series-check: every patch directory's series applies with plain `git am` to the
## pristine kernel source (kernel patches, then the probes; the stock probes on their own)
kernel-series-check: $(IMAGE_PRISTINE)/.fetched
	@echo "==> git am of the kernel patch series onto hermit-kernel $(HERMIT_KERNEL_VERSION)"
	@$(IMAGE_XTASK) kernel-series am --pristine $(IMAGE_PRISTINE) $(IMAGE_HERMIT_APP)/kernel/patches $(IMAGE_HERMIT_APP)/kernel/probe-patches $(IMAGE_HERMIT_APP)/kernel/event-probe-patches
	@$(IMAGE_XTASK) kernel-series am --pristine $(IMAGE_PRISTINE) $(IMAGE_HERMIT_APP)/kernel/stock-probe-patches $(IMAGE_HERMIT_APP)/kernel/event-probe-patches

## kernel-series-repo: the patched kernel as a git repository to change the series in
## (build/kernel-series; tags pristine, patches, probe-patches, event-probe-patches; see README-image.md)
kernel-series-repo: $(IMAGE_PRISTINE)/.fetched
	@$(IMAGE_XTASK) kernel-series repo --pristine $(IMAGE_PRISTINE) --dest $(IMAGE_BUILD)/kernel-series $(IMAGE_HERMIT_APP)/kernel/patches $(IMAGE_HERMIT_APP)/kernel/probe-patches $(IMAGE_HERMIT_APP)/kernel/event-probe-patches

# Cargo decides what to recompile; the export steps run only when an archive changed.
hermit-kernel: $(IMAGE_KERNEL_DIR)/.prepared hermit-toolchain
	@$(IMAGE_XTASK) build-kernel --toolchain $(HERMIT_TOOLCHAIN) --src $(IMAGE_KERNEL_DIR)/src --out $(IMAGE_KERNEL_DIR) \
		--features $(KERNEL_FEATURES) --builtins-src $(IMAGE_HERMIT_APP)/builtins --builtins-target $(IMAGE_BUILD)/builtins

## loader: the project's multiboot loader (stable toolchain)
loader:
	@$(IMAGE_XTASK) build-loader --loader-dir $(IMAGE_HERMIT_APP)/loader --target-dir $(IMAGE_BUILD)/loader

qemu-install:
	@$(IMAGE_SCRIPTS)/install-qemu.sh

gdb-install:
	@$(IMAGE_SCRIPTS)/install-gdb.sh

# SMP, CPU, MEM and the timeout checked before anything is built.
boot-args:
	@$(IMAGE_XTASK) boot-args --smp '$(SMP)' --cpu '$(CPU)' --mem '$(MEM)' --timeout '$(QEMU_TIMEOUT)'

## boot-args-test: bad SMP/CPU/MEM/timeout values are refused with a clear error before QEMU
## runs, and QEMU's own refusal is not reported as a guest failure (part of make test)
boot-args-test: $(IMAGE_LOADER_DEP) qemu-install
	@$(MAKE) --no-print-directory -f $(IMAGE_MK) APP=cores image
	@$(IMAGE_XTASK) boot-args-test --loader $(LOADER) --image $(IMAGE_KERNEL_DIR)/apps/x86_64-unknown-hermit/release/cores

## qemu: boot APP under QEMU with SMP cores on CPU; succeeds only if the application exits 0
qemu: boot-args image $(IMAGE_LOADER_DEP) qemu-install
	@echo "==> booting $(APP) under QEMU: $(SMP) cores, cpu $(CPU), $(MEM)"
	@$(IMAGE_XTASK) qemu --loader $(LOADER) --image $(IMAGE) --smp '$(SMP)' --cpu '$(CPU)' --mem '$(MEM)' --timeout '$(QEMU_TIMEOUT)' --append '$(APP_ARGS)' -- $(QEMU_EXTRA)

## qemu-debug: boot APP like qemu, with QEMU's gdb stub and monitor on loopback; if the guest has
## not exited after QEMU_DEBUG_TIMEOUT s, print every vCPU's RIP (monitor) and symbolized
## backtrace (gdb), then kill it (exit status 2). Files in QEMU_DEBUG_OUT (default under build/).
QEMU_DEBUG_OUT ?= $(IMAGE_BUILD)/qemu-debug/$(APP)-smp$(SMP)
qemu-debug: boot-args image $(IMAGE_LOADER_DEP) qemu-install gdb-install
	@echo "==> booting $(APP) under QEMU with the gdb stub: $(SMP) cores, cpu $(CPU), $(MEM), hang after $(QEMU_DEBUG_TIMEOUT) s"
	@QEMU_DEBUG_OUT=$(QEMU_DEBUG_OUT) $(IMAGE_SCRIPTS)/qemu-debug.sh $(LOADER) $(IMAGE) $(SMP) $(CPU) $(MEM) $(QEMU_DEBUG_TIMEOUT) \
		-- $(QEMU_EXTRA) $(if $(APP_ARGS),-append "-- $(APP_ARGS)")

## lock-inject-test: ipiq-tests' sched_locks stress with a timer interrupt armed (through the gdb
## stub) for any moment vCPU 1 holds SCHEDULER_INPUTS with interrupts on; passes if that never
## happens and the stress passes (patched kernel; part of make test; without the lock-order patch it hung)
lock-inject-test: $(IMAGE_LOADER_DEP) qemu-install gdb-install
	@$(MAKE) --no-print-directory -f $(IMAGE_MK) KERNEL=patched APP=ipiq-tests image
	@$(IMAGE_XTASK) lock-inject-test --loader $(LOADER) --image $(IMAGE_BUILD)/kernel-patched/apps/x86_64-unknown-hermit/release/ipiq-tests \
		--out $(IMAGE_BUILD)/qemu-debug/lock-inject-test

## qemu-debug-test: qemu-debug on the spin app (loops forever on 2 cores on purpose): the target
## must report a hang and both vCPUs' backtraces must name spin_on_purpose (part of make test)
qemu-debug-test: $(IMAGE_LOADER_DEP) qemu-install gdb-install
	@$(MAKE) --no-print-directory -f $(IMAGE_MK) APP=spin image
	@$(IMAGE_XTASK) qemu-debug-test --loader $(LOADER) --image $(IMAGE_KERNEL_DIR)/apps/x86_64-unknown-hermit/release/spin \
		--out $(IMAGE_BUILD)/qemu-debug/spin-test

## uhyve: run APP under uhyve with SMP cores (needs KVM with VMX/SVM)
uhyve: image
	@$(IMAGE_XTASK) uhyve --image $(IMAGE) --smp '$(SMP)' --timeout '$(UHYVE_TIMEOUT)' --version $(UHYVE_VERSION)

## image-test: boot the cores app (and, patched, ipiq-tests) with 1, 2, 4, 8 cores, x2APIC and xAPIC, check the output
image-test: override APP := cores
image-test: image $(IMAGE_LOADER_DEP) qemu-install
ifeq ($(KERNEL),patched)
	@$(IMAGE_XTASK) build-app --toolchain $(HERMIT_TOOLCHAIN) --app-dir $(IMAGE_HERMIT_APP)/apps/ipiq-tests --kernel-dir $(IMAGE_KERNEL_DIR) --target-dir $(IMAGE_KERNEL_DIR)/apps
endif
	@$(IMAGE_XTASK) image-test --loader $(LOADER) --image $(IMAGE) --kernel $(KERNEL) --logs $(IMAGE_KERNEL_DIR)/test-logs --timeout '$(QEMU_TIMEOUT)' \
		$(if $(filter patched,$(KERNEL)),--ipiq-tests $(IMAGE_KERNEL_DIR)/apps/x86_64-unknown-hermit/release/ipiq-tests --ipiq-tests-smp '$(IPIQ_TESTS_SMP)')
	@$(MAKE) --no-print-directory -f $(IMAGE_MK) kernel-tests

## kernel-tests: build hermit-kernel's own tests/ on each KERNEL_TESTS_KERNELS source and boot
## every test binary with LOADER on KERNEL_TESTS_SMP vCPUs
kernel-tests: $(IMAGE_LOADER_DEP) qemu-install hermit-toolchain
	@for k in $(KERNEL_TESTS_KERNELS); do \
		$(MAKE) --no-print-directory -f $(IMAGE_MK) KERNEL=$$k $(IMAGE_BUILD)/kernel-$$k/.prepared || exit 1; \
	done
	@$(IMAGE_XTASK) kernel-tests --toolchain $(HERMIT_TOOLCHAIN) --loader $(LOADER) --features $(KERNEL_FEATURES) --logs $(IMAGE_BUILD)/kernel-test-logs \
		--timeout '$(QEMU_TIMEOUT)' --smp '$(KERNEL_TESTS_SMP)' \
		$(foreach k,$(KERNEL_TESTS_KERNELS),--kernel $(k)=$(IMAGE_BUILD)/kernel-$(k)/src:$(IMAGE_BUILD)/kernel-$(k)/test-target)

## tlb-stale-test: the stale-TLB experiment (apps/tlb-stale) on TLB_STALE_KERNELS with
## TLB_STALE_SMP vCPUs: on stock-probe it reports what readers see after stock's remap (the ipiq
## kernel's 0 is asserted by ipiq-tests in image-test, and by tlb-stale itself when run on it)
tlb-stale-test: $(IMAGE_LOADER_DEP) qemu-install
	@for k in $(TLB_STALE_KERNELS); do \
		$(MAKE) --no-print-directory -f $(IMAGE_MK) KERNEL=$$k APP=tlb-stale image || exit 1; \
	done
	@echo "==> stale-TLB experiment on $(TLB_STALE_KERNELS), $(TLB_STALE_SMP) vCPUs, $(TLB_STALE_MODES); logs in $(TLB_STALE_LOGS)"
	@$(IMAGE_XTASK) tlb-stale --loader $(LOADER) --logs $(TLB_STALE_LOGS) --timeout '$(QEMU_TIMEOUT)' --smp '$(TLB_STALE_SMP)' --modes '$(TLB_STALE_MODES)' \
		--summary '$(TLB_STALE_SUMMARY)' $(foreach k,$(TLB_STALE_KERNELS),--image $(k)=$(IMAGE_BUILD)/kernel-$(k)/apps/x86_64-unknown-hermit/release/tlb-stale)

## fpu-test: apps/fpu-stress on the patched kernel (application messages computing with f64,
## x87 and AVX against pinned threads checking their own state bit for bit) with FPU_TEST_SMP
## vCPUs on FPU_TEST_MODES, and with 2 vCPUs and AVX required on FPU_TEST_AVX_MODELS
fpu-test: $(IMAGE_LOADER_DEP) qemu-install
	@$(MAKE) --no-print-directory -f $(IMAGE_MK) KERNEL=patched APP=fpu-stress image
	@echo "==> fpu-stress on $(FPU_TEST_SMP) vCPUs, $(FPU_TEST_MODES); AVX on $(FPU_TEST_AVX_MODELS); logs in $(FPU_TEST_LOGS)"
	@$(IMAGE_XTASK) fpu-test --loader $(LOADER) --image $(IMAGE_BUILD)/kernel-patched/apps/x86_64-unknown-hermit/release/fpu-stress \
		--logs $(FPU_TEST_LOGS) --timeout '$(QEMU_TIMEOUT)' --smp '$(FPU_TEST_SMP)' --modes '$(FPU_TEST_MODES)' --avx-models '$(FPU_TEST_AVX_MODELS)' --args '$(FPU_TEST_ARGS)'

## image-run: build everything and boot the first application with 4 cores
image-run: image $(IMAGE_LOADER_DEP) qemu-install
	@echo "==> booting $(APP) under QEMU: 4 cores, cpu $(CPU), $(MEM)"
	@$(IMAGE_XTASK) qemu --loader $(LOADER) --image $(IMAGE) --smp 4 --cpu '$(CPU)' --mem '$(MEM)' --timeout '$(QEMU_TIMEOUT)'

## image-clean: remove every build output of the pipeline
image-clean:
	rm -rf $(IMAGE_BUILD)
