//! [`HostMachine`]: the simulated cores' threads, their kernel loop, and the tasks run on them
//! ([`HostCore`], [`Pending`]).

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::irq::{local_irq_save, AtPlace, CoreState, Place};
use super::platform::*;
use super::{preempt, HostConfig, IrqDelivery, CORE, CURRENT, HANDLER_IPIQ};
use crate::platform::{CpuId, Platform};
use crate::{Error, Ipiq};

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

    fn state(&self) -> &CoreState {
        &self.ipiq.platform().cores[self.cpu]
    }

    /// Takes interrupts: serves a pending IPI and a due timer tick. Returns the messages run.
    /// Does nothing while the core's interrupts are off. In preemptive mode interrupts also
    /// arrive on their own; this takes whatever is pending (ticks come from the timer thread).
    pub fn interrupt_point(&self) -> usize {
        let state = self.state();
        // Relaxed: the core's own flag, read by its own thread.
        if state.irq_off.load(Ordering::Relaxed) {
            return 0;
        }
        let _at = AtPlace::new(state, Place::SafePoint);
        if state.preemptive {
            return preempt::take_at_safe_point(state);
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
        let _at = AtPlace::new(self.state(), Place::SafePoint);
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

    /// As the kernel's idle loop halts: with interrupts off, mark the core halted for lazy
    /// senders and look once more; then `sti; hlt`: sleep until an IPI, a task or the tick; or
    /// drain at once if a message came in meanwhile.
    fn halt(&self) {
        let platform = self.ipiq.platform();
        let irq = platform.irq_save();
        if self.ipiq.prepare_halt() {
            let at = AtPlace::new(self.state(), Place::Halted);
            // `sti`: an interrupt that came meanwhile is taken here, and ends the halt at once
            // (the IPI's unpark, or the handler's, leaves park's token set).
            platform.irq_restore(irq);
            self.sleep();
            drop(at);
            self.ipiq.end_halt();
        } else {
            platform.irq_restore(irq);
            self.ipiq.process();
        }
    }

    /// Sleeps until an IPI, a task or the next tick. Race-free: an unpark that comes between
    /// the last check and the park makes the park return at once (park's token). With delayed
    /// IPIs injected, at most 500 us, so that halted cores also deliver the ones falling due;
    /// otherwise nothing but an IPI, a task or the tick wakes a halted core, as on hardware.
    fn sleep(&self) {
        let wait = if self.state().preemptive {
            // The timer thread's tick interrupts the park (its handler unparks a halted core).
            Duration::from_micros(500)
        } else {
            let until_tick = self
                .next_tick
                .get()
                .saturating_duration_since(Instant::now());
            if self.ipiq.platform().delay_per_mille > 0 {
                until_tick.min(Duration::from_micros(500))
            } else {
                until_tick
            }
        };
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
    /// The timer thread (preemptive mode): ticks and late IPIs as interrupts.
    timer: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl HostMachine {
    /// Starts `config.cpus` core threads, each online and idle.
    ///
    /// # Panics
    /// If [`HostMachine::try_start`] fails (a thread cannot be spawned, or the preemptive mode
    /// is not available): a harness that cannot start cannot test anything.
    pub fn start(config: HostConfig) -> Self {
        Self::try_start(config).unwrap_or_else(|e| panic!("ipiq host: starting a machine: {e}"))
    }

    /// Starts `config.cpus` core threads, each online and idle; in preemptive mode also installs
    /// the interrupt signal's handler (once per process) and starts the timer thread. Errors: a
    /// thread could not be spawned, the preemptive mode is not supported on this OS
    /// (`ErrorKind::Unsupported`), or another handler owns its signal.
    pub fn try_start(config: HostConfig) -> io::Result<Self> {
        let preemptive = config.delivery == IrqDelivery::Preemptive;
        if preemptive {
            preempt::install()?;
        }
        let ipiq = Arc::new(Ipiq::new(HostPlatform::new(&config), config.ipiq));
        let stop = Arc::new(AtomicBool::new(false));
        // Built up in place, so that an error below stops the threads already started (Drop).
        let mut machine = Self {
            ipiq: ipiq.clone(),
            inboxes: Vec::new(),
            threads: Vec::new(),
            timer: None,
            stop: stop.clone(),
        };
        for cpu in 0..ipiq.cpu_count() {
            let (tx, rx) = mpsc::channel::<Task>();
            let core_ipiq = ipiq.clone();
            let stop = stop.clone();
            let (tick, idle_poll) = (config.tick, config.idle_poll);
            let handle = thread::Builder::new()
                .name(format!("cpu{cpu}"))
                .spawn(move || core_loop(cpu, &core_ipiq, &rx, &stop, tick, idle_poll))?;
            let state = &ipiq.platform().cores[cpu];
            // Registered here too, so unparks (and kicks) work before the thread has started.
            let _ = state.thread.set(handle.thread().clone());
            #[cfg(target_os = "linux")]
            {
                use std::os::unix::thread::JoinHandleExt;
                state.line.set_thread(handle.as_pthread_t());
            }
            machine.inboxes.push(tx);
            machine.threads.push(handle);
        }
        // Every core must be online before a task sends to it.
        for cpu in 0..ipiq.cpu_count() {
            let _ = ipiq.cpu_online(cpu);
        }
        if preemptive {
            let timer_ipiq = ipiq.clone();
            let tick = config.tick;
            machine.timer = Some(
                thread::Builder::new()
                    .name("timer".into())
                    .spawn(move || timer_loop(&timer_ipiq, &stop, tick))?,
            );
        }
        Ok(machine)
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

    /// Keeps core `cpu` busy with a task that reaches no safe point, so it takes no interrupt
    /// and drains nothing (as a core running a long stretch with interrupts disabled), until
    /// `busy` is cleared; returns once the task runs, with a handle to join it.
    pub fn occupy(&self, cpu: CpuId, busy: &Arc<AtomicBool>) -> Result<Pending<()>, Error> {
        let started = Arc::new(AtomicBool::new(false));
        let (busy, running) = (busy.clone(), started.clone());
        let task = self.spawn_on(cpu, move |_| {
            // Release: pairs with the Acquire wait below.
            running.store(true, Ordering::Release);
            // Acquire: pairs with the caller's Release clear.
            while busy.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
        })?;
        // Acquire: the task runs once this is seen.
        while !started.load(Ordering::Acquire) {
            thread::yield_now();
        }
        Ok(task)
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
        // The timer first: after it, only cores kick cores, and each core waits for the kicks
        // in flight to it before it leaves (`IrqLine::retire`).
        if let Some(timer) = self.timer.take() {
            timer.thread().unpark();
            let _ = timer.join();
        }
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
    let state = &ipiq.platform().cores[cpu];
    CURRENT.with(|c| c.set(Some(cpu)));
    // Before anything turns interrupts on: from here the handler finds the core.
    CORE.with(|c| c.set(state));
    HANDLER_IPIQ.with(|c| c.set(ipiq));
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
                let _at = AtPlace::new(state, Place::Work);
                task(&core);
                continue;
            }
            Err(mpsc::TryRecvError::Disconnected) | Err(mpsc::TryRecvError::Empty) => {}
        }
        // Acquire: pairs with the Release in `stop_threads`.
        if stop.load(Ordering::Acquire) {
            core.interrupt_point();
            ipiq.process();
            break;
        }
        core.halt();
    }
    // Leaving: interrupts off for good, no kick reaches this thread after `retire`, and the
    // handler's pointers are cleared before the caller drops the thread's reference to the
    // machine.
    let _ = local_irq_save();
    state.line.retire();
    HANDLER_IPIQ.with(|c| c.set(std::ptr::null()));
    CORE.with(|c| c.set(std::ptr::null()));
}

/// The machine's timer (preemptive mode): every `tick` it raises the tick request of each core
/// and kicks it; between ticks it delivers late IPIs as they fall due. Stops when `stop` is set
/// (and it is unparked).
fn timer_loop(ipiq: &Ipiq<HostPlatform>, stop: &AtomicBool, tick: Duration) {
    let platform = ipiq.platform();
    let period = tick.max(Duration::from_micros(50));
    // Late IPIs are due `ipi_delay` after their send: look a few times per delay.
    let late_poll = (platform.delay / 4).clamp(Duration::from_micros(20), period);
    let mut next_tick = Instant::now() + period;
    // Acquire: pairs with the Release in `stop_threads`.
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + period;
            for core in platform.cores.iter() {
                // Relaxed: a tick publishes nothing; the core's Acquire swap takes it.
                core.tick_pending.store(true, Ordering::Relaxed);
                core.line.kick();
            }
        }
        platform.deliver_due();
        let mut wait = next_tick.saturating_duration_since(Instant::now());
        if platform.delay_per_mille > 0 {
            wait = wait.min(late_poll);
        }
        thread::park_timeout(wait);
    }
}
