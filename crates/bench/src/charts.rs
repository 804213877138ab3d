//! The report's SVG charts (plotters; SVG text needs no font files).
use crate::decode::DecodeReport;
use crate::report::ReportError;
use crate::serve::ServeReport;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

const MODES: [(&str, RGBColor); 4] = [
    ("off", RGBColor(90, 90, 90)),
    ("auto", RGBColor(40, 160, 90)),
    ("verify", RGBColor(40, 110, 200)),
    ("alternate", RGBColor(230, 140, 30)),
];
/// Peers' bars and lines, in the order they were given.
const PEERS: [RGBColor; 3] = [RGBColor(170, 60, 160), RGBColor(200, 60, 60), RGBColor(120, 90, 40)];
const SIZE: (u32, u32) = (760, 440);

fn peer_color(i: usize) -> RGBColor {
    PEERS[i % PEERS.len()]
}

type Drawn = Result<(), Box<dyn std::error::Error>>;
type Chart<'a> = &'a dyn Fn(&Path) -> Drawn;

fn chart_error(name: &str) -> impl Fn(Box<dyn std::error::Error>) -> ReportError + '_ {
    move |e| ReportError::Chart(name.to_string(), e.to_string())
}

/// Draws every chart into `out` and returns their file names.
pub fn draw_all(
    out: &Path,
    decode: &[DecodeReport],
    peer_decode: &[(String, f64)],
    serve: &[ServeReport],
) -> Result<Vec<String>, ReportError> {
    let charts: [(&str, Chart); 4] = [
        ("decode_tokens_per_second.svg", &|p| decode_modes(p, decode, peer_decode)),
        ("serve_throughput.svg", &|p| {
            serve_metric(p, serve, "Aggregate generated tokens/s", "tokens/s", |r| r.tokens_per_second)
        }),
        ("serve_ttft.svg", &|p| serve_metric(p, serve, "Time to first token, p50", "ms", |r| r.ttft_p50_ms)),
        ("verify_vs_agreement.svg", &|p| verify_vs_agreement(p, decode)),
    ];
    let mut names = Vec::new();
    for (name, draw) in charts {
        draw(&out.join(name)).map_err(chart_error(name))?;
        names.push(name.to_string());
    }
    Ok(names)
}

/// Grouped bars: one group per shape, one bar per mode, log scale (shapes differ 100-fold);
/// each recycled bar is labelled with its speed-up over `off`. Peers' figures for the model
/// (the last group) stand beside its modes, labelled with `off`'s speed-up over them.
fn decode_modes(path: &Path, reports: &[DecodeReport], peers: &[(String, f64)]) -> Drawn {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let rate = |r: &DecodeReport, m: &str| r.tokens_per_second.get(m).copied().unwrap_or(0.0);
    let rates = || reports.iter().flat_map(|r| r.tokens_per_second.values().copied()).chain(peers.iter().map(|p| p.1));
    let max = rates().fold(10.0, f64::max);
    let min = rates().fold(max, f64::min).max(1.0);
    let mut chart = ChartBuilder::on(&root)
        .caption("Decode tokens/s by mode, one sequence", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..reports.len() as f64, (min / 2.0..max * 8.0).log_scale())?;
    chart.configure_mesh().disable_x_mesh().x_labels(0).y_desc("tokens/s (log)").draw()?;
    let width = 0.8 / (MODES.len() + peers.len()) as f64;
    for (m, (mode, color)) in MODES.iter().enumerate() {
        let bars = reports.iter().enumerate().filter(|(_, r)| rate(r, mode) > 0.0).map(|(i, r)| {
            let x0 = i as f64 + 0.1 + m as f64 * width;
            Rectangle::new([(x0, min / 2.0), (x0 + width * 0.9, rate(r, mode))], color.filled())
        });
        chart
            .draw_series(bars)?
            .label(*mode)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        if m > 0 {
            let labels = reports.iter().enumerate().filter(|(_, r)| rate(r, mode) > 0.0).map(|(i, r)| {
                let x = i as f64 + 0.1 + (m as f64 + 0.45) * width;
                let speedup = rate(r, mode) / rate(r, "off").max(f64::MIN_POSITIVE);
                Text::new(
                    format!("{speedup:.2}x"),
                    (x, rate(r, mode) * 1.15),
                    ("sans-serif", 12).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom)),
                )
            });
            chart.draw_series(labels)?;
        }
    }
    if let Some(model) = reports.last() {
        let last = (reports.len() - 1) as f64;
        for (k, (name, value)) in peers.iter().enumerate() {
            let (x0, color) = (last + 0.1 + (MODES.len() + k) as f64 * width, peer_color(k));
            chart
                .draw_series([Rectangle::new([(x0, min / 2.0), (x0 + width * 0.9, *value)], color.filled())])?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
            chart.draw_series([Text::new(
                format!("off {:.2}x", rate(model, "off") / value.max(f64::MIN_POSITIVE)),
                (x0 + width * 0.45, value * 1.15),
                ("sans-serif", 12).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom)),
            )])?;
        }
    }
    for (i, r) in reports.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, min / 2.0));
        root.draw(&Text::new(
            r.shape.clone(),
            (x, y + 8),
            ("sans-serif", 14).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .position(SeriesLabelPosition::UpperMiddle)
        .draw()?;
    root.present()?;
    Ok(())
}

/// One line per mode over the client counts.
fn serve_metric(
    path: &Path,
    reports: &[ServeReport],
    title: &str,
    unit: &str,
    value: fn(&ServeReport) -> f64,
) -> Drawn {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut clients: Vec<usize> = reports.iter().map(|r| r.clients).collect();
    clients.sort_unstable();
    clients.dedup();
    let max = reports.iter().map(value).fold(0.0, f64::max).max(1e-9) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{title}, by concurrent clients"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        // A segmented range includes its end: n client counts are segments 0..=n-1.
        .build_cartesian_2d((0..clients.len().saturating_sub(1) as i32).into_segmented(), 0.0..max)?;
    let labels = clients.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("concurrent streaming clients")
        .y_desc(unit)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).map(|c| c.to_string()).unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    let mut peers: Vec<&str> = reports.iter().filter(|r| r.server != "recyclegpt").map(|r| r.server.as_str()).collect();
    peers.dedup();
    // Ours in each mode, then each peer (in its plain decoding).
    let ours = MODES.iter().map(|&(mode, color)| (mode, color, "recyclegpt", mode));
    let theirs = peers.iter().enumerate().map(|(k, &peer)| (peer, peer_color(k), peer, "off"));
    for (label, color, server, mode) in ours.chain(theirs) {
        let points: Vec<(SegmentValue<i32>, f64)> = reports
            .iter()
            .filter(|r| r.server == server && r.mode == mode)
            .filter_map(|r| {
                clients.iter().position(|&c| c == r.clients).map(|i| (SegmentValue::CenterOf(i as i32), value(r)))
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], color.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Measured greedy verify tokens per full forward against module agreement, with the ideal
/// 1 + agreement line (each full forward checks one draft).
fn verify_vs_agreement(path: &Path, reports: &[DecodeReport]) -> Drawn {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Verify: tokens per full forward vs module agreement", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..1f64, 0.9f64..2.05f64)?;
    chart
        .configure_mesh()
        .x_desc("module top-1 agreement with the full model")
        .y_desc("tokens per full forward")
        .draw()?;
    chart
        .draw_series(LineSeries::new([(0.0, 1.0), (1.0, 2.0)], RGBColor(150, 150, 150).stroke_width(1)))?
        .label("ideal: 1 + agreement")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], RGBColor(150, 150, 150)));
    let color = MODES[2].1;
    let points: Vec<(f64, f64, String)> = reports
        .iter()
        .filter_map(|r| r.module_agreement.map(|a| (a, r.verify_tokens_per_full_forward, r.shape.clone())))
        .collect();
    chart
        .draw_series(points.iter().map(|(a, t, _)| Circle::new((*a, *t), 5, color.filled())))?
        .label("measured (greedy verify)")
        .legend(move |(x, y)| Circle::new((x + 7, y), 4, color.filled()));
    chart.draw_series(points.iter().map(|(a, t, name)| {
        Text::new(
            name.clone(),
            (*a + 0.02, *t),
            ("sans-serif", 13).into_font().color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center)),
        )
    }))?;
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
