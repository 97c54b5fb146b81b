//! Medians and spreads, the table, the JSON file and the SVG chart.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;

use crate::contenders::CONTENDERS;
use crate::parent::{Failure, Planned, RunResult, Setup};
use crate::workloads::Pace;

/// Median and spread of one figure over the runs of a cell.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    fn of(values: impl IntoIterator<Item = f64>) -> Option<Stat> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// One cell: a contender on a workload, over its successful runs.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub workload: &'static str,
    pub contender: &'static str,
    pub runs: usize,
    pub throughput: Stat,
    pub cpu_us: Stat,
    pub user_us: Stat,
    pub sys_us: Stat,
    /// User and system CPU µs per invocation of the run whose total is the median (they add
    /// up to `cpu_us.median` with an odd number of runs; shown in the table and the chart).
    pub median_run_user_us: f64,
    pub median_run_sys_us: f64,
    pub switches: Stat,
    pub allocs: Stat,
    /// Minor page faults per invocation.
    pub faults: Stat,
    pub rss_mib: Stat,
    /// CPU per invocation of the simulator process.
    pub sim_cpu_us: Stat,
    /// Other processes' CPU use on the bench CPUs, percent of the window.
    pub foreign_pct: Option<Stat>,
    pub p50_us: Stat,
    pub p99_us: Stat,
    pub p999_us: Stat,
    /// Mixed workload: p99 of the well-behaved invocations.
    pub ok_p99_us: Option<Stat>,
    /// Open loop: rejected arrivals, percent of the window's arrivals.
    pub rejected_pct: Option<Stat>,
    /// Open loop: rejected arrivals in the window.
    pub rejected: Option<Stat>,
    /// Median CPU per invocation over the baseline's (`official-mt`).
    pub cpu_ratio: Option<f64>,
    /// Median invocations/s over the baseline's.
    pub throughput_ratio: Option<f64>,
}

/// One summary per (workload, contender) with at least one successful run.
pub fn summarize(plan: &[Planned], results: &[RunResult]) -> Vec<Summary> {
    let mut out = Vec::new();
    for p in plan {
        let w = p.workload;
        let mut cells: Vec<Summary> = Vec::new();
        for c in &p.contenders {
            let runs: Vec<&RunResult> = results
                .iter()
                .filter(|r| r.workload == w.name && r.contender == c.name)
                .collect();
            let stat = |f: &dyn Fn(&RunResult) -> f64| Stat::of(runs.iter().map(|r| f(r)));
            let Some(throughput) = stat(&|r| r.throughput) else {
                continue;
            };
            let or_zero = |s: Option<Stat>| {
                s.unwrap_or(Stat {
                    median: 0.0,
                    min: 0.0,
                    max: 0.0,
                })
            };
            let open = matches!(w.pace, Pace::OpenLoop(_));
            let mut by_cpu: Vec<&&RunResult> = runs.iter().collect();
            by_cpu.sort_by(|a, b| a.cpu_us.total_cmp(&b.cpu_us));
            let (median_run_user_us, median_run_sys_us) = by_cpu
                .get(by_cpu.len().saturating_sub(1) / 2)
                .map_or((0.0, 0.0), |r| (r.user_us, r.sys_us));
            cells.push(Summary {
                workload: w.name,
                contender: c.name,
                runs: runs.len(),
                throughput,
                cpu_us: or_zero(stat(&|r| r.cpu_us)),
                user_us: or_zero(stat(&|r| r.user_us)),
                sys_us: or_zero(stat(&|r| r.sys_us)),
                median_run_user_us,
                median_run_sys_us,
                switches: or_zero(stat(&|r| r.switches)),
                allocs: or_zero(stat(&|r| r.allocs)),
                faults: or_zero(stat(&|r| r.faults)),
                rss_mib: or_zero(stat(&|r| r.rss_mib)),
                sim_cpu_us: or_zero(stat(&|r| r.sim_cpu_us)),
                foreign_pct: Stat::of(runs.iter().filter_map(|r| r.foreign_pct)),
                p50_us: or_zero(stat(&|r| r.p50_us as f64)),
                p99_us: or_zero(stat(&|r| r.p99_us as f64)),
                p999_us: or_zero(stat(&|r| r.p999_us as f64)),
                ok_p99_us: Stat::of(runs.iter().filter_map(|r| r.ok_p99_us.map(|v| v as f64))),
                rejected_pct: open
                    .then(|| stat(&|r| 100.0 * r.rejected as f64 / (r.arrivals.max(1)) as f64))
                    .flatten(),
                rejected: open.then(|| stat(&|r| r.rejected as f64)).flatten(),
                cpu_ratio: None,
                throughput_ratio: None,
            });
        }
        let baseline = CONTENDERS
            .iter()
            .find(|c| c.baseline)
            .and_then(|b| cells.iter().find(|s| s.contender == b.name))
            .map(|b| (b.cpu_us.median, b.throughput.median));
        if let Some((cpu, tput)) = baseline {
            for s in &mut cells {
                s.cpu_ratio = (cpu > 0.0).then(|| s.cpu_us.median / cpu);
                s.throughput_ratio = (tput > 0.0).then(|| s.throughput.median / tput);
            }
        }
        out.extend(cells);
    }
    out
}

/// Foreign CPU use (percent of one CPU over the window) above which a cell is flagged.
const NOISE_PCT: f64 = 5.0;

fn find<'a>(summaries: &'a [Summary], workload: &str, contender: &str) -> Option<&'a Summary> {
    summaries
        .iter()
        .find(|s| s.workload == workload && s.contender == contender)
}

fn kilo(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.1}k", x / 1000.0)
    } else if x >= 1000.0 {
        format!("{:.2}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

fn spread(s: &Stat, f: fn(f64) -> String) -> String {
    format!("{} [{}–{}]", f(s.median), f(s.min), f(s.max))
}

fn one_decimal(x: f64) -> String {
    format!("{x:.1}")
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}×"))
}

/// Prints one table per workload, then the CPU-per-invocation overview.
pub fn print(setup: &Setup, plan: &[Planned], summaries: &[Summary]) {
    let baseline = CONTENDERS
        .iter()
        .find(|c| c.baseline)
        .map_or("-", |c| c.name);
    println!();
    println!(
        "Machine: {}, {}, {} CPUs online; simulator on CPU {:?}, contender on CPU {:?}",
        setup.cpu_model, setup.kernel, setup.cpus_online, setup.sim_cpus, setup.runtime_cpus
    );
    println!(
        "Figures: median [min–max] of {} run(s) per cell; ×off: ratio of medians to {baseline}. \
         Event framing: {}.",
        setup.runs, setup.framing
    );
    println!(
        "  CPU µs/inv: the runtime process's CPU time (getrusage: all threads, user + sys) per \
         invocation over the measurement window;"
    );
    println!("  the total is exact; user/sys: the median run's split, tick-sampled by the kernel.");
    println!(
        "  p50/p99/p99.9: µs from /next hand-out to the end of the /response body. RSS: peak. \
         allocs, ctxsw, faults (minor page faults): per invocation."
    );
    println!("  sim µs: the simulator process's CPU per invocation (it bounds inv/s on 2 cores).");
    for p in plan {
        let w = p.workload;
        let rows: Vec<&Summary> = p
            .contenders
            .iter()
            .filter_map(|c| find(summaries, w.name, c.name))
            .collect();
        if rows.is_empty() {
            continue;
        }
        println!();
        let rate = match w.pace {
            Pace::OpenLoop(Some(r)) => format!(", {r:.0} arrivals/s"),
            Pace::OpenLoop(None) => setup
                .open_rate
                .map(|r| format!(", {r:.0} arrivals/s"))
                .unwrap_or_default(),
            _ => String::new(),
        };
        println!(
            "== {}: {}{rate} ({} invocations measured after {} warm-up)",
            w.name, w.about, p.measure, p.warmup
        );
        let extra = match w.pace {
            Pace::OpenLoop(_) => "   rejected %",
            _ if rows.iter().any(|s| s.ok_p99_us.is_some()) => "  ok p99 µs",
            _ => "",
        };
        println!(
            "{:<22} {:>23} {:>19} {:>6} {:>6} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>7} {:>6} {:>6} {:>6}{extra}",
            "contender",
            "inv/s",
            "CPU µs/inv",
            "user",
            "sys",
            "CPU×off",
            "inv×off",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "RSS MiB",
            "allocs",
            "ctxsw",
            "faults",
            "sim µs"
        );
        for s in &rows {
            let extra = match (w.pace, &s.rejected_pct, &s.ok_p99_us) {
                (Pace::OpenLoop(_), Some(r), _) => {
                    format!("  {:>5.2} [{:.2}–{:.2}]", r.median, r.min, r.max)
                }
                (_, _, Some(ok)) => format!("  {:>9.0}", ok.median),
                _ => String::new(),
            };
            println!(
                "{:<22} {:>23} {:>19} {:>6.1} {:>6.1} {:>7} {:>7} {:>7.0} {:>7.0} {:>8.0} {:>7.1} {:>7.1} {:>6.2} {:>6.2} {:>6.1}{extra}",
                s.contender,
                spread(&s.throughput, kilo),
                spread(&s.cpu_us, one_decimal),
                s.median_run_user_us,
                s.median_run_sys_us,
                ratio(s.cpu_ratio),
                ratio(s.throughput_ratio),
                s.p50_us.median,
                s.p99_us.median,
                s.p999_us.median,
                s.rss_mib.median,
                s.allocs.median,
                s.switches.median,
                s.faults.median,
                s.sim_cpu_us.median,
            );
        }
        let foreign: Vec<Stat> = rows.iter().filter_map(|s| s.foreign_pct).collect();
        let worst = foreign.iter().map(|f| f.max).fold(0.0_f64, f64::max);
        if worst > NOISE_PCT {
            let typical = Stat::of(foreign.iter().map(|f| f.median)).map_or(0.0, |m| m.median);
            println!(
                "   ! other processes used the bench CPUs during these runs: {typical:.0}% of a CPU \
                 typically, {worst:.0}% at worst (figures are noisy)"
            );
        }
    }
    // Overview: CPU per invocation, contenders x workloads.
    println!();
    println!("== CPU µs per invocation (× {baseline}), median");
    let mut header = format!("{:<22}", "contender");
    for p in plan {
        header.push_str(&format!(" {:>16}", p.workload.name));
    }
    println!("{header}");
    for c in CONTENDERS {
        if !summaries.iter().any(|s| s.contender == c.name) {
            continue;
        }
        let mut line = format!("{:<22}", c.name);
        for p in plan {
            let cell = find(summaries, p.workload.name, c.name).map_or_else(
                || "-".to_owned(),
                |s| match s.cpu_ratio {
                    Some(r) => format!("{:.1} ({r:.2}×)", s.cpu_us.median),
                    None => format!("{:.1}", s.cpu_us.median),
                },
            );
            line.push_str(&format!(" {cell:>16}"));
        }
        println!("{line}");
    }
    println!();
}

#[derive(Serialize)]
struct Output<'a> {
    setup: &'a Setup,
    summaries: &'a [Summary],
    runs: &'a [RunResult],
    failures: &'a [Failure],
}

/// Writes everything as pretty JSON.
pub fn write_json(
    path: &Path,
    setup: &Setup,
    runs: &[RunResult],
    summaries: &[Summary],
    failures: &[Failure],
) -> Result<(), String> {
    let out = Output {
        setup,
        summaries,
        runs,
        failures,
    };
    let text = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Draws CPU per invocation (user and system stacked, min–max whisker), one panel per workload.
pub fn write_svg(
    path: &Path,
    setup: &Setup,
    plan: &[Planned],
    summaries: &[Summary],
) -> Result<(), String> {
    draw_svg(path, setup, plan, summaries).map_err(|e| format!("{}: {e}", path.display()))
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw_svg(path: &Path, setup: &Setup, plan: &[Planned], summaries: &[Summary]) -> DrawResult {
    let panels: Vec<(&Planned, Vec<&Summary>)> = plan
        .iter()
        .map(|p| {
            let rows = p
                .contenders
                .iter()
                .filter_map(|c| find(summaries, p.workload.name, c.name))
                .collect::<Vec<_>>();
            (p, rows)
        })
        .filter(|(_, rows)| !rows.is_empty())
        .collect();
    let ncols = if panels.len() > 1 { 2 } else { 1 };
    let nrows = panels.len().div_ceil(ncols).max(1);
    let max_rows = panels.iter().map(|(_, r)| r.len()).max().unwrap_or(1);
    let panel_h = 80 + 24 * max_rows as u32;
    let size = (700 * ncols as u32, 70 + panel_h * nrows as u32);
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(70);
    top.draw_text(
        "CPU µs per invocation of the runtime process: median total, split user (blue) / system \
         (orange) as in the median run; whisker = min–max",
        &("sans-serif", 17).into_font().color(&BLACK),
        (12, 12),
    )?;
    top.draw_text(
        &format!(
            "{}, {}; simulator on CPU {:?}, contender on CPU {:?}; {} run(s) per cell",
            setup.cpu_model, setup.kernel, setup.sim_cpus, setup.runtime_cpus, setup.runs
        ),
        &("sans-serif", 13).into_font().color(&BLACK.mix(0.7)),
        (12, 40),
    )?;
    let areas = body.split_evenly((nrows, ncols));
    let user_color = RGBColor(66, 112, 189);
    let sys_color = RGBColor(235, 137, 52);
    for (area, (p, rows)) in areas.iter().zip(&panels) {
        let n = rows.len();
        let xmax = rows.iter().map(|s| s.cpu_us.max).fold(0.0_f64, f64::max) * 1.2 + 1e-6;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{}: {}", p.workload.name, p.workload.about),
                ("sans-serif", 13),
            )
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(140)
            .build_cartesian_2d(0f64..xmax, 0f64..n as f64)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_labels(6)
            .x_desc("µs CPU per invocation")
            .label_style(("sans-serif", 11))
            .draw()?;
        let base = area.get_base_pixel();
        for (i, s) in rows.iter().enumerate() {
            // First contender on top.
            let y = (n - 1 - i) as f64;
            // The median run's split, scaled to the median total.
            let split = s.median_run_user_us + s.median_run_sys_us;
            let frac = if split > 0.0 {
                s.median_run_user_us / split
            } else {
                0.0
            };
            let user = s.cpu_us.median * frac;
            let sys = s.cpu_us.median - user;
            chart.draw_series([
                Rectangle::new([(0.0, y + 0.2), (user, y + 0.8)], user_color.filled()),
                Rectangle::new([(user, y + 0.2), (user + sys, y + 0.8)], sys_color.filled()),
            ])?;
            chart.draw_series([PathElement::new(
                vec![(s.cpu_us.min, y + 0.5), (s.cpu_us.max, y + 0.5)],
                BLACK.stroke_width(2),
            )])?;
            let label = match s.cpu_ratio {
                Some(r) => format!("{:.1} ({r:.2}×)", s.cpu_us.median),
                None => format!("{:.1}", s.cpu_us.median),
            };
            chart.draw_series([Text::new(
                label,
                (s.cpu_us.max.max(user + sys) + xmax * 0.01, y + 0.5),
                ("sans-serif", 11)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            )])?;
            let (px, py) = chart.backend_coord(&(0.0, y + 0.5));
            area.draw_text(
                s.contender,
                &("sans-serif", 12)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Right, VPos::Center)),
                (px - base.0 - 6, py - base.1),
            )?;
        }
    }
    root.present()?;
    Ok(())
}
