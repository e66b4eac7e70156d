//! Peak memory of one render + apply of the large workload (S2) into a
//! temporary root: `cargo run --release --example footprint`.

#[path = "../benches/workload/mod.rs"]
mod workload;

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let base_rss = status_kb("VmRSS:");
    let dir = tempfile::tempdir().expect("temp dir");
    let applier =
        image_policy_agent::apply::Applier::new(dir.path().join("root"), dir.path().join("state"));
    let t = std::time::Instant::now();
    let snap = workload::snapshot(workload::s2());
    let rendered = image_policy_agent::render::render(&snap).expect("render");
    let render_time = t.elapsed();
    image_policy_agent::preflight::check(&rendered, None).expect("preflight");
    let report = applier.apply(&rendered).expect("apply");
    let total = t.elapsed();
    let (mut largest, mut sum, mut n) = (0usize, 0usize, 0usize);
    let _ = rendered.for_each_file(|_, b| {
        largest = largest.max(b.len());
        sum += b.len();
        n += 1;
        Ok::<(), ()>(())
    });
    println!(
        "S2: {n} files, {} written, largest {} KiB, all files {} MiB",
        report.written.len(),
        largest / 1024,
        sum / 1024 / 1024
    );
    println!(
        "render {:.0} ms, render+preflight+apply {:.0} ms",
        render_time.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3
    );
    println!(
        "RSS before {} KiB, peak (VmHWM) {} KiB",
        base_rss,
        status_kb("VmHWM:")
    );
}
