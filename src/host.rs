//! The host platform (feature `std`): OS threads stand in for cores, for tests, examples and
//! benchmarks.
//!
//! Each simulated core is a thread running a small kernel loop: it serves a pending IPI (by
//! calling [`Ipiq::process`]), runs the timer tick every [`HostConfig::tick`], runs tasks handed
//! to it with [`HostMachine::run_on`] / [`HostMachine::spawn_on`], and otherwise sleeps. An IPI
//! marks the target pending and unparks its thread. A task is like kernel code with interrupts
//! enabled only at its *interrupt points* ([`HostCore::interrupt_point`], and inside every ipiq
//! call that spins, which drains the core's queues itself).
//!
//! Fault injection: [`HostConfig::drop_ipi_per_mille`] of the IPIs vanish and
//! [`HostConfig::delay_ipi_per_mille`] arrive only after [`HostConfig::ipi_delay`]. Lost IPIs are
//! recovered by the tick and the watchdogs, as on hardware that misbehaves.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crate::platform::{CpuId, IrqState, Platform};
use crate::sync::CachePadded;
use crate::{Config, Error, Ipiq};

std::thread_local! {
    /// The simulated core this thread is, if any.
    static CURRENT: Cell<Option<CpuId>> = const { Cell::new(None) };
    /// The simulated interrupt-disable flag of this thread's core.
    static IRQ_OFF: Cell<bool> = const { Cell::new(false) };
    /// Counts `relax` calls, to yield the OS CPU now and then.
    static SPINS: Cell<u32> = const { Cell::new(0) };
}

/// How to build a [`HostMachine`].
#[derive(Clone, Copy, Debug)]
pub struct HostConfig {
    /// Simulated cores.
    pub cpus: usize,
    /// The ipiq settings.
    pub ipiq: Config,
    /// Timer tick period of each core.
    pub tick: Duration,
    /// IPIs lost, per thousand.
    pub drop_ipi_per_mille: u32,
    /// IPIs delivered late, per thousand.
    pub delay_ipi_per_mille: u32,
    /// How late a delayed IPI arrives.
    pub ipi_delay: Duration,
    /// Seed of the fault-injection generator.
    pub seed: u64,
    /// How long an idle core polls its queues (through [`Ipiq::poll`], staying signalled so
    /// senders need no IPI) before it sleeps; zero: it sleeps at once, as a core that halts.
    pub idle_poll: Duration,
}

impl HostConfig {
    /// `cpus` cores, default ipiq settings, a 1 ms tick, no faults.
    pub fn cpus(cpus: usize) -> Self {
        Self {
            cpus,
            ipiq: Config::default(),
            tick: Duration::from_millis(1),
            drop_ipi_per_mille: 0,
            delay_ipi_per_mille: 0,
            ipi_delay: Duration::from_micros(200),
            seed: 0x9e37_79b9_7f4a_7c15,
            idle_poll: Duration::ZERO,
        }
    }
}

/// Per simulated core.
#[derive(Default)]
struct CoreState {
    /// Set (Release) by `send_ipi`, taken (Acquire swap) by the core: the IRR bit.
    pending: CachePadded<AtomicBool>,
    /// The core's thread, for unparking.
    thread: OnceLock<Thread>,
    /// TLB flush counters (ranged calls, pages, full flushes), for tests.
    range_flushes: AtomicU64,
    pages_flushed: AtomicU64,
    full_flushes: AtomicU64,
    /// IPIs that reached this core.
    ipis_delivered: AtomicU64,
}

/// The [`Platform`] of simulated cores.
pub struct HostPlatform {
    epoch: Instant,
    cores: Box<[CoreState]>,
    drop_per_mille: u32,
    delay_per_mille: u32,
    delay: Duration,
    /// xorshift state for fault injection.
    rng: AtomicU64,
    /// Late IPIs: (due, target).
    delayed: Mutex<Vec<(Instant, CpuId)>>,
    /// Length of `delayed`, read without the lock to skip it when empty.
    delayed_len: AtomicUsize,
    dropped: AtomicU64,
    delayed_total: AtomicU64,
}

/// IPI delivery figures of a host machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpiFaults {
    /// IPIs dropped by fault injection.
    pub dropped: u64,
    /// IPIs delayed by fault injection.
    pub delayed: u64,
    /// IPIs that reached a core.
    pub delivered: u64,
}

/// TLB flushes a simulated core performed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlbFlushes {
    /// Ranged flush calls.
    pub ranges: u64,
    /// Pages flushed by range.
    pub pages: u64,
    /// Full flushes.
    pub full: u64,
}

impl HostPlatform {
    fn new(config: &HostConfig) -> Self {
        Self {
            epoch: Instant::now(),
            cores: (0..config.cpus.max(1))
                .map(|_| CoreState::default())
                .collect(),
            drop_per_mille: config.drop_ipi_per_mille.min(1000),
            delay_per_mille: config.delay_ipi_per_mille.min(1000),
            delay: config.ipi_delay,
            rng: AtomicU64::new(config.seed | 1),
            delayed: Mutex::new(Vec::new()),
            delayed_len: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            delayed_total: AtomicU64::new(0),
        }
    }

    /// A number in `0..1000` from the fault generator.
    fn roll(&self) -> u32 {
        // Relaxed: the generator's state orders nothing; a lost update only repeats a number.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x % 1000) as u32
    }

    fn deliver(&self, target: CpuId) {
        let core = &self.cores[target];
        // Relaxed: a statistic.
        core.ipis_delivered.fetch_add(1, Ordering::Relaxed);
        // Release: the sender's queue stores happen before the target sees the interrupt
        // (pairs with the Acquire swap in `take_pending`).
        core.pending.store(true, Ordering::Release);
        if let Some(thread) = core.thread.get() {
            thread.unpark();
        }
    }

    /// Delivers the delayed IPIs that are due.
    fn deliver_due(&self) {
        // Relaxed: a hint; the list itself is read under its lock.
        if self.delayed_len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let now = Instant::now();
        let due: Vec<CpuId> = {
            let Ok(mut list) = self.delayed.lock() else {
                return;
            };
            let mut due = Vec::new();
            list.retain(|&(at, cpu)| {
                let keep = at > now;
                if !keep {
                    due.push(cpu);
                }
                keep
            });
            self.delayed_len.store(list.len(), Ordering::Relaxed);
            due
        };
        for cpu in due {
            self.deliver(cpu);
        }
    }

    /// Takes the core's pending IPI, if any.
    fn take_pending(&self, cpu: CpuId) -> bool {
        // Acquire: pairs with the Release store in `deliver`.
        self.cores[cpu].pending.swap(false, Ordering::Acquire)
    }

    /// The fault-injection figures so far.
    pub fn ipi_faults(&self) -> IpiFaults {
        // Relaxed: statistics, ordering nothing.
        IpiFaults {
            dropped: self.dropped.load(Ordering::Relaxed),
            delayed: self.delayed_total.load(Ordering::Relaxed),
            delivered: self
                .cores
                .iter()
                .map(|c| c.ipis_delivered.load(Ordering::Relaxed))
                .sum(),
        }
    }

    /// The TLB flushes core `cpu` performed.
    pub fn tlb_flushes(&self, cpu: CpuId) -> TlbFlushes {
        self.cores
            .get(cpu)
            .map_or_else(TlbFlushes::default, |c| TlbFlushes {
                ranges: c.range_flushes.load(Ordering::Relaxed),
                pages: c.pages_flushed.load(Ordering::Relaxed),
                full: c.full_flushes.load(Ordering::Relaxed),
            })
    }
}

// SAFETY: each simulated core is one thread (its id thread-local), interrupts only at its
// interrupt points, which an irq_save section never reaches; other threads' calls panic.
unsafe impl Platform for HostPlatform {
    fn current_cpu(&self) -> CpuId {
        match CURRENT.with(Cell::get) {
            Some(cpu) => cpu,
            // A harness bug, not bad input: ipiq calls belong on simulated cores.
            None => panic!(
                "ipiq host platform: this thread is not a simulated core (use HostMachine::run_on)"
            ),
        }
    }

    fn cpu_count(&self) -> usize {
        self.cores.len()
    }

    fn send_ipi(&self, target: CpuId) {
        if self.drop_per_mille > 0 && self.roll() < self.drop_per_mille {
            // Relaxed: a statistic.
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.delay_per_mille > 0 && self.roll() < self.delay_per_mille {
            // Relaxed: a statistic; the list itself is under its lock.
            self.delayed_total.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut list) = self.delayed.lock() {
                list.push((Instant::now() + self.delay, target));
                self.delayed_len.store(list.len(), Ordering::Relaxed);
                return;
            }
        }
        self.deliver(target);
    }

    fn irq_save(&self) -> IrqState {
        IrqState(!IRQ_OFF.with(|off| off.replace(true)))
    }

    fn irq_restore(&self, state: IrqState) {
        IRQ_OFF.with(|off| off.set(!state.0));
    }

    fn relax(&self) {
        std::hint::spin_loop();
        // Simulated cores may outnumber the host's CPUs: let the others run now and then, and
        // keep late IPIs flowing even while every core spins.
        let spins = SPINS.with(|s| {
            let n = s.get().wrapping_add(1);
            s.set(n);
            n
        });
        if spins & 15 == 0 {
            self.deliver_due();
            thread::yield_now();
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn flush_tlb_range(&self, _start: usize, pages: usize) {
        let core = &self.cores[self.current_cpu()];
        // Relaxed: flush counters are statistics for tests, read after the shootdown returned
        // (which synchronizes through the cpusync counts).
        core.range_flushes.fetch_add(1, Ordering::Relaxed);
        core.pages_flushed
            .fetch_add(pages as u64, Ordering::Relaxed);
    }

    fn flush_tlb_all(&self) {
        // Relaxed: see `flush_tlb_range`.
        self.cores[self.current_cpu()]
            .full_flushes
            .fetch_add(1, Ordering::Relaxed);
    }
}

type Task = Box<dyn FnOnce(&HostCore<'_>) + Send>;

/// A simulated core, as seen by a task running on it.
pub struct HostCore<'a> {
    cpu: CpuId,
    ipiq: &'a Ipiq<HostPlatform>,
    tick: Duration,
    next_tick: Cell<Instant>,
    idle_poll: Duration,
}

impl HostCore<'_> {
    /// This core's index.
    pub fn cpu(&self) -> CpuId {
        self.cpu
    }

    /// The machine's queues.
    pub fn ipiq(&self) -> &Ipiq<HostPlatform> {
        self.ipiq
    }

    /// Takes interrupts: serves a pending IPI and a due timer tick. Returns the messages run.
    pub fn interrupt_point(&self) -> usize {
        if IRQ_OFF.with(Cell::get) {
            return 0;
        }
        let platform = self.ipiq.platform();
        platform.deliver_due();
        let mut ran = 0;
        if platform.take_pending(self.cpu) {
            ran += self.ipiq.process();
        }
        let now = Instant::now();
        if now >= self.next_tick.get() {
            self.next_tick.set(now + self.tick);
            ran += self.ipiq.tick();
        }
        ran
    }

    /// Idles (taking interrupts, sleeping between them) until `done()` holds. With
    /// [`HostConfig::idle_poll`], the core first polls its queues that long (signalled: senders
    /// skip the IPI) and sleeps only when nothing came in that time.
    pub fn idle_until(&self, mut done: impl FnMut() -> bool) {
        loop {
            self.interrupt_point();
            if done() {
                return;
            }
            if !self.idle_poll.is_zero() {
                let mut until = Instant::now() + self.idle_poll;
                loop {
                    self.interrupt_point();
                    if self.ipiq.poll() > 0 {
                        until = Instant::now() + self.idle_poll;
                    }
                    if done() || Instant::now() >= until {
                        break;
                    }
                    std::hint::spin_loop();
                }
                // `poll`'s contract: `process` clears the signal after a last look before the
                // core turns to other work or sleeps.
                self.ipiq.process();
                if done() {
                    return;
                }
            }
            self.halt();
        }
    }

    /// As the kernel's idle loop halts: mark the core halted for lazy senders, look once more,
    /// sleep until an IPI, a task or the tick; or drain at once if a message came in meanwhile.
    fn halt(&self) {
        if self.ipiq.prepare_halt() {
            self.sleep();
            self.ipiq.end_halt();
        } else {
            self.ipiq.process();
        }
    }

    /// Sleeps until an IPI, a task or the next tick. Race-free: an unpark that comes between
    /// the last check and the park makes the park return at once (park's token).
    fn sleep(&self) {
        let wait = self
            .next_tick
            .get()
            .saturating_duration_since(Instant::now());
        let wait = wait.min(Duration::from_micros(500));
        if !wait.is_zero() {
            thread::park_timeout(wait);
        }
    }
}

/// A handle to a task's result.
pub struct Pending<R> {
    result: mpsc::Receiver<std::thread::Result<R>>,
}

impl<R> Pending<R> {
    /// Waits for the task; a task that panicked re-raises its panic here.
    pub fn join(self) -> R {
        match self.result.recv() {
            Ok(Ok(value)) => value,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("ipiq host: the core running this task stopped"),
        }
    }
}

/// A machine of simulated cores sharing one [`Ipiq`].
pub struct HostMachine {
    ipiq: Arc<Ipiq<HostPlatform>>,
    inboxes: Vec<mpsc::Sender<Task>>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl HostMachine {
    /// Starts `config.cpus` core threads, each online and idle.
    pub fn start(config: HostConfig) -> Self {
        let ipiq = Arc::new(Ipiq::new(HostPlatform::new(&config), config.ipiq));
        let stop = Arc::new(AtomicBool::new(false));
        let mut inboxes = Vec::new();
        let mut threads = Vec::new();
        for cpu in 0..ipiq.cpu_count() {
            let (tx, rx) = mpsc::channel::<Task>();
            inboxes.push(tx);
            let core_ipiq = ipiq.clone();
            let stop = stop.clone();
            let (tick, idle_poll) = (config.tick, config.idle_poll);
            let handle = thread::Builder::new()
                .name(format!("cpu{cpu}"))
                .spawn(move || core_loop(cpu, &core_ipiq, &rx, &stop, tick, idle_poll))
                .expect("spawning a simulated core thread");
            // Registered here too, so unparks work before the thread has started.
            let _ = ipiq.platform().cores[cpu]
                .thread
                .set(handle.thread().clone());
            threads.push(handle);
        }
        // Every core must be online before a task sends to it.
        for cpu in 0..ipiq.cpu_count() {
            let _ = ipiq.cpu_online(cpu);
        }
        Self {
            ipiq,
            inboxes,
            threads,
            stop,
        }
    }

    /// The machine's queues.
    pub fn ipiq(&self) -> &Arc<Ipiq<HostPlatform>> {
        &self.ipiq
    }

    /// The machine's platform.
    pub fn platform(&self) -> &HostPlatform {
        self.ipiq.platform()
    }

    /// Runs `task` on core `cpu` and returns a handle to its result.
    pub fn spawn_on<R, F>(&self, cpu: CpuId, task: F) -> Result<Pending<R>, Error>
    where
        R: Send + 'static,
        F: FnOnce(&HostCore<'_>) -> R + Send + 'static,
    {
        let inbox = self.inboxes.get(cpu).ok_or(Error::NoSuchCpu(cpu))?;
        let (tx, rx) = mpsc::channel();
        let task: Task = Box::new(move |core| {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task(core)));
            let _ = tx.send(result);
        });
        inbox.send(task).map_err(|_| Error::CpuOffline(cpu))?;
        if let Some(thread) = self.ipiq.platform().cores[cpu].thread.get() {
            thread.unpark();
        }
        Ok(Pending { result: rx })
    }

    /// Runs `task` on core `cpu` and waits for its result.
    pub fn run_on<R, F>(&self, cpu: CpuId, task: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&HostCore<'_>) -> R + Send + 'static,
    {
        Ok(self.spawn_on(cpu, task)?.join())
    }

    /// Runs `task` on every core at once and returns the results in core order.
    pub fn run_on_all<R, F>(&self, task: F) -> Vec<R>
    where
        R: Send + 'static,
        F: Fn(&HostCore<'_>) -> R + Send + Sync + 'static,
    {
        let task = Arc::new(task);
        let pending: Vec<_> = (0..self.ipiq.cpu_count())
            .map(|cpu| {
                let task = task.clone();
                self.spawn_on(cpu, move |core| task(core))
                    .expect("every core of a running machine takes tasks")
            })
            .collect();
        pending.into_iter().map(Pending::join).collect()
    }

    /// Waits until every accepted message has run (bounded by `timeout`); returns whether it did.
    pub fn quiesce(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.ipiq.outstanding() == 0 {
                return true;
            }
            for core in self.ipiq.platform().cores.iter() {
                if let Some(thread) = core.thread.get() {
                    thread.unpark();
                }
            }
            thread::sleep(Duration::from_micros(200));
        }
        self.ipiq.outstanding() == 0
    }

    /// Drains every queue (up to 10 s), stops the cores and returns the queues.
    pub fn shutdown(mut self) -> Arc<Ipiq<HostPlatform>> {
        self.quiesce(Duration::from_secs(10));
        self.stop_threads();
        self.ipiq.clone()
    }

    fn stop_threads(&mut self) {
        // Release: pairs with the cores' Acquire load; nothing else is ordered by it.
        self.stop.store(true, Ordering::Release);
        self.inboxes.clear();
        for handle in self.threads.drain(..) {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

impl Drop for HostMachine {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

fn core_loop(
    cpu: CpuId,
    ipiq: &Ipiq<HostPlatform>,
    inbox: &mpsc::Receiver<Task>,
    stop: &AtomicBool,
    tick: Duration,
    idle_poll: Duration,
) {
    CURRENT.with(|c| c.set(Some(cpu)));
    let core = HostCore {
        cpu,
        ipiq,
        tick,
        next_tick: Cell::new(Instant::now() + tick),
        idle_poll,
    };
    loop {
        core.interrupt_point();
        match inbox.try_recv() {
            Ok(task) => {
                task(&core);
                continue;
            }
            Err(mpsc::TryRecvError::Disconnected) | Err(mpsc::TryRecvError::Empty) => {}
        }
        // Acquire: pairs with the Release in `stop_threads`.
        if stop.load(Ordering::Acquire) {
            core.interrupt_point();
            ipiq.process();
            return;
        }
        core.halt();
    }
}
