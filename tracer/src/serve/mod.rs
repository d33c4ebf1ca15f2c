//! `tracer serve`: every detector (or those named) in one process and one load of the
//! eBPF object, running until stopped, with their latest reports served over HTTP as
//! Prometheus metrics. Read-only: GET and HEAD only, nothing can be changed over HTTP.
//! A cap on requests in progress (not on sockets: idle connections make room) and
//! timeouts keep slow or many clients from holding the process or keeping scrapes out.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, watch},
};

mod conns;

use crate::{
    detectors,
    prom::{Collect, Families},
    report::Emitted,
    run::{self, RunOpts},
    sink::{PromFile, Sink},
};

/// The default address: a port of its own, outside 9100-9999 (Prometheus' exporter
/// range, fully allocated) and away from the kubelet's and kube-proxy's 10248-10256.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:10130";

/// A client must send its request headers within this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this long, however busy.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Run detectors continuously and serve their metrics to Prometheus.
///
/// Loads the eBPF object once for every detector named (default: all five), refreshes
/// each one's report every --interval, and serves:
///   /metrics     every detector's report as of the scrape, as Prometheus metrics
///                (docs/metrics.md lists them)
///   /            a page linking the others
///   /-/healthy   200 while the process runs
///   /-/ready     200 once every detector's programs are attached, 503 before
/// Stops on Ctrl-C or SIGTERM (or after --duration).
///
/// Examples:
///   sudo tracer serve                                   # all detectors on :10130
///   sudo tracer serve --listen 127.0.0.1:10130 --detectors zombies,cgroups
///   curl -s localhost:10130/metrics | grep '^tracer_'
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Address and port to serve HTTP on.
    #[arg(long, default_value = DEFAULT_LISTEN, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Detectors to run, comma-separated (default: every one).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub detectors: Vec<String>,
    /// How often each detector reports when nobody scrapes (--prom-file is rewritten
    /// then); a scrape of /metrics gets a report from each as of the scrape.
    #[arg(short = 'i', long, value_parser = run::parse_duration, default_value = "5s", value_name = "INTERVAL")]
    pub interval: Duration,
    /// Stop after this long (default: run until Ctrl-C or SIGTERM).
    #[arg(short = 'd', long, value_parser = run::parse_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// Also write the metrics to FILE (node_exporter textfile), the same as /metrics.
    #[arg(long, value_name = "FILE")]
    pub prom_file: Option<PathBuf>,
    /// Do not have the kernel time BPF programs. By default serve turns the kernel's
    /// BPF statistics on while it runs (BPF_ENABLE_STATS; the switch is host-wide, a
    /// few tens of ns per program run) to export each of its programs' run count and
    /// CPU time (tracer_bpf_program_*).
    #[arg(long)]
    pub no_bpf_stats: bool,
}

/// What the HTTP side reads: readiness and each detector's latest report.
#[derive(Default)]
struct State {
    ready: AtomicBool,
    /// Each detector's latest report and when it was built.
    latest: Mutex<BTreeMap<String, (Emitted, Instant)>>,
    /// Asks the run for a report from every detector (set once they are attached).
    refresh: OnceLock<mpsc::Sender<oneshot::Sender<()>>>,
    /// Rounds of reports asked for and completed: a scrape joins the round in flight
    /// or starts one, so concurrent scrapes share one.
    rounds: Mutex<Rounds>,
    completed: OnceLock<watch::Sender<u64>>,
    /// The open connections and the request slots.
    conns: Arc<conns::Conns>,
}

#[derive(Default)]
struct Rounds {
    started: u64,
    in_flight: bool,
}

/// How long a scrape waits for the detectors to report: a round that takes longer (a
/// detector behind a storm of events, or a starved CPU) is not waited for, and the
/// scrape gets the latest reports, whose age `tracer_report_age_seconds` gives. The
/// round still completes, for the next scrape.
const SCRAPE_WAIT: Duration = Duration::from_millis(20);

impl State {
    /// The metrics: every detector reports what it has (the ring drained up to now),
    /// unless that takes over [`SCRAPE_WAIT`]; then the registry is built from the
    /// latest reports, each with its age.
    async fn metrics(self: &Arc<Self>) -> String {
        if let Some(round) = self.join_round()
            && let Some(completed) = self.completed.get()
        {
            let mut rx = completed.subscribe();
            let _ = tokio::time::timeout(SCRAPE_WAIT, rx.wait_for(|&done| done >= round)).await;
        }
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let aged: Vec<_> = (latest.values())
            .map(|(r, at)| r.aged(Some(now.saturating_duration_since(*at).as_secs_f64())))
            .collect();
        let own = ServeStats {
            idle_closed: self.conns.closed_idle(),
            cpu_s: own_cpu_seconds(),
            rss_bytes: own_rss_bytes(),
        };
        let all: Vec<&dyn Collect> = (aged.iter().map(|a| a as &dyn Collect))
            .chain([&own as &dyn Collect])
            .collect();
        crate::prom::render(&all)
    }

    /// The number of the round this scrape waits for: the one in flight, or a new one
    /// asked of the run. None before the run starts or after it ended.
    fn join_round(self: &Arc<Self>) -> Option<u64> {
        let refresh = self.refresh.get()?;
        let mut r = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        if r.in_flight {
            return Some(r.started);
        }
        let (done, built) = oneshot::channel();
        refresh.try_send(done).ok()?;
        r.started += 1;
        r.in_flight = true;
        let round = r.started;
        let state = self.clone();
        tokio::spawn(async move {
            // An error: the run ended; the round is over either way.
            let _ = built.await;
            state
                .rounds
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .in_flight = false;
            if let Some(c) = state.completed.get() {
                c.send_replace(round);
            }
        });
        Some(round)
    }
}

/// Serve's own series, at the scrape.
struct ServeStats {
    idle_closed: u64,
    cpu_s: Option<f64>,
    rss_bytes: Option<u64>,
}

impl Collect for ServeStats {
    fn collect(&self, out: &mut Families) {
        out.sample(&crate::prom::own::SERVE_IDLE_CLOSED, &[], self.idle_closed);
        out.opt(&crate::prom::own::PROCESS_CPU, &[], self.cpu_s);
        out.opt(&crate::prom::own::PROCESS_RSS, &[], self.rss_bytes);
    }
}

/// This process's CPU time, user and system (all threads), in seconds.
fn own_cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return None;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(u.ru_utime) + secs(u.ru_stime))
}

/// This process's resident memory (/proc/self/statm), in bytes.
fn own_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// The sink that keeps each detector's latest report for /metrics.
struct Latest(Arc<State>);

impl Sink for Latest {
    fn write(&mut self, r: &Emitted) -> Result<()> {
        let mut latest = self.0.latest.lock().unwrap_or_else(|e| e.into_inner());
        latest.insert(r.header.command.clone(), (r.clone(), Instant::now()));
        Ok(())
    }
}

pub async fn run(args: Args) -> Result<u8> {
    let entries = chosen(&args.detectors)?;
    // Bind first: a port in use is one sentence before anything is loaded.
    let listener = TcpListener::bind(args.listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {}: {e}; pass another address with --listen",
            args.listen
        )
    })?;
    // Nothing is served by a process that cannot run every detector completely.
    let names: Vec<&str> = entries.iter().map(|e| e.spec.detector).collect();
    crate::bpf::require_privileges("serve", &names)?;
    let addr = listener.local_addr()?;
    let state = Arc::new(State::default());
    tokio::spawn(serve_http(listener, state.clone()));
    eprintln!("Serving metrics on http://{addr}/metrics");

    let mut prepared = Vec::new();
    for e in &entries {
        let m = e
            .command()
            .try_get_matches_from([e.spec.detector])
            .map_err(|err| anyhow::anyhow!("{err}"))?;
        prepared.push((e.prepare)(&m)?);
    }
    let opts = RunOpts {
        duration: args.duration,
        interval: Some(args.interval),
        json: false,
        prom_file: args.prom_file.clone(),
    };
    let mut started = run::start(prepared, opts)?;
    if !args.no_bpf_stats
        && let Err(why) = started.time_programs()
    {
        log::warn!("{why}; tracer_bpf_program_* are not exported");
    }
    // One round in flight at a time (see State::join_round): one request suffices.
    let (refresh, asked) = mpsc::channel(1);
    let _ = state.completed.set(watch::Sender::new(0));
    let _ = state.refresh.set(refresh);
    // Ready once every detector's programs are attached; from then on each scrape gets
    // every detector's report as of the scrape.
    state.ready.store(true, Ordering::Release);
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(Latest(state.clone()))];
    if let Some(p) = args.prom_file {
        sinks.push(Box::new(PromFile::new(p)));
    }
    // Triage's verdict is a metric here (tracer_triage_worst_severity), not the exit
    // status: serve exits 0 when stopped, 1 on an error.
    started.run_serving(sinks, Some(asked)).await.map(|_| 0)
}

/// The registry entries `names` asks for (all when empty), or one sentence naming the
/// unknown one and the known ones.
fn chosen(names: &[String]) -> Result<Vec<&'static detectors::Entry>> {
    if names.is_empty() {
        return Ok(detectors::ALL.iter().collect());
    }
    let mut out = Vec::new();
    for n in names {
        let Some(e) = detectors::find(n) else {
            let known: Vec<&str> = detectors::ALL.iter().map(|e| e.spec.detector).collect();
            bail!(
                "no detector is named `{n}`; --detectors takes a comma-separated list of {}",
                known.join(", ")
            );
        };
        if !out.iter().any(|o: &&detectors::Entry| std::ptr::eq(*o, e)) {
            out.push(e);
        }
    }
    Ok(out)
}

async fn serve_http(listener: TcpListener, state: Arc<State>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // At the cap the connection idle longest makes room; when every one has a
        // request in progress, this one is closed now rather than queued.
        let Some(admitted) = state.conns.admit() else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let id = admitted.id;
            let conns = state.conns.clone();
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move {
                    let _busy = state.conns.request(id).await;
                    Ok::<_, Infallible>(respond(&state, &req).await)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            // Made room for another: dropping the connection closes its socket (it
            // had no request in progress).
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {}
                () = admitted.close.notified() => {}
            }
            conns.gone(id);
        });
    }
}

const LANDING: &str = "<!doctype html><html><head><title>tracer</title></head><body>\
<h1>tracer</h1><p>eBPF tracer for Linux production incidents.</p><ul>\
<li><a href=\"/metrics\">/metrics</a>: Prometheus metrics</li>\
<li><a href=\"/-/healthy\">/-/healthy</a></li><li><a href=\"/-/ready\">/-/ready</a></li>\
</ul></body></html>\n";

async fn respond(state: &Arc<State>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        let body = if req.method() == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from(body)
        };
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        if let Ok(v) = header::HeaderValue::from_str(ctype) {
            r.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        r
    };
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "read-only: GET or HEAD\n".into(),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let ready = state.ready.load(Ordering::Acquire);
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            crate::prom::CONTENT_TYPE,
            state.metrics().await,
        ),
        "/" => reply(StatusCode::OK, "text/html; charset=utf-8", LANDING.into()),
        "/-/healthy" => reply(StatusCode::OK, PLAIN, "Healthy\n".into()),
        "/-/ready" if ready => reply(StatusCode::OK, PLAIN, "Ready\n".into()),
        "/-/ready" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "Not ready: attaching the programs\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found; try /metrics\n".into(),
        ),
    }
}
