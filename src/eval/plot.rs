//! `eval.png` (both scores against the step, one panel each with its own y axis, the best step
//! marked) and the per-step grids (one row per prompt, one column per seed).
use super::best::StepScores;
use crate::train::metrics::{text_width, ticks, Canvas, Rgb8, CHAR_H, CHAR_W};
use anyhow::{bail, Result};

const WHITE: [u8; 3] = [255, 255, 255];
const GRID: [u8; 3] = [230, 230, 230];
const AXIS: [u8; 3] = [90, 90, 90];
const IMAGE: [u8; 3] = [20, 60, 160];
const TEXT: [u8; 3] = [200, 90, 20];
const BEST: [u8; 3] = [30, 150, 60];

/// The plot of `steps` (in step order), `best` the index of the best step.
pub fn eval_plot(steps: &[StepScores], best: Option<usize>, width: u32, height: u32) -> Rgb8 {
    let (w, h) = (width.max(200) as i64, height.max(160) as i64);
    let mut cv = Canvas { w, h, data: WHITE.repeat((w * h) as usize) };
    let title = "CLIP scores per saved step";
    cv.text((w - text_width(title, 2)) / 2, 4, title, AXIS, 2);
    let xs: Vec<f64> = steps.iter().map(|s| s.step as f64).collect();
    let (mut x_lo, mut x_hi) = xs.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    if xs.is_empty() {
        (x_lo, x_hi) = (0.0, 1.0);
    }
    if x_hi <= x_lo {
        (x_lo, x_hi) = (x_lo - 1.0, x_hi + 1.0);
    }
    let pad = (x_hi - x_lo) * 0.04;
    (x_lo, x_hi) = (x_lo - pad, x_hi + pad);
    let (left, right) = (8 * CHAR_W + 14, w - 12);
    let (top, bottom) = (2 * CHAR_H + 16, h - 2 * CHAR_H - 20);
    let mid = (top + bottom) / 2;
    let px = |x: f64| (left + ((x - x_lo) / (x_hi - x_lo) * (right - left) as f64).round() as i64).clamp(-1, w);
    let best_x = best.and_then(|i| xs.get(i)).map(|&x| px(x));
    let image: Vec<f64> = steps.iter().map(|s| s.image_similarity).collect();
    let text: Vec<f64> = steps.iter().map(|s| s.text_similarity).collect();
    let panels = [("image_similarity", IMAGE, &image, top + CHAR_H + 4, mid - 8), ("text_similarity", TEXT, &text, mid + CHAR_H + 12, bottom)];
    for (label, color, ys, p_top, p_bottom) in panels {
        panel(&mut cv, (left, right, p_top, p_bottom), &xs, ys, &px, color, best_x);
        cv.text(left, p_top - CHAR_H - 4, label, color, 1);
    }
    let (x_ticks, _) = ticks(x_lo, x_hi, 6.0);
    for v in x_ticks.iter().filter(|v| v.fract() == 0.0) {
        let x = px(*v);
        cv.line((x, bottom), (x, bottom + 4), AXIS);
        let label = format!("{v:.0}");
        cv.text(x - text_width(&label, 1) / 2, bottom + 8, &label, AXIS, 1);
    }
    let x_title = match best {
        Some(i) if i < steps.len() => format!("step (best: {}, green)", steps[i].step),
        _ => "step".to_string(),
    };
    cv.text((left + right - text_width(&x_title, 1)) / 2, h - CHAR_H - 4, &x_title, AXIS, 1);
    Rgb8 { width: w as u32, height: h as u32, data: cv.data }
}

/// One panel: its own y axis from the values' range, grid, the line with a mark per step, and
/// the best step's vertical line.
fn panel(
    cv: &mut Canvas,
    (left, right, top, bottom): (i64, i64, i64, i64),
    xs: &[f64],
    ys: &[f64],
    px: &dyn Fn(f64) -> i64,
    color: [u8; 3],
    best_x: Option<i64>,
) {
    let finite: Vec<f64> = ys.iter().copied().filter(|y| y.is_finite()).collect();
    let (mut lo, mut hi) = finite.iter().fold((f64::MAX, f64::MIN), |(a, b), &y| (a.min(y), b.max(y)));
    if finite.is_empty() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-4 {
        (lo, hi) = (lo - 5e-3, hi + 5e-3);
    }
    let pad = (hi - lo) * 0.08;
    (lo, hi) = (lo - pad, hi + pad);
    let py = |y: f64| (bottom - ((y - lo) / (hi - lo) * (bottom - top) as f64).round() as i64).clamp(top - 1, bottom + 1);
    let (y_ticks, dec) = ticks(lo, hi, 4.0);
    for v in &y_ticks {
        let y = py(*v);
        cv.line((left, y), (right, y), GRID);
        cv.line((left - 4, y), (left, y), AXIS);
        let label = format!("{v:.dec$}");
        cv.text(left - 6 - text_width(&label, 1), y - CHAR_H / 2, &label, AXIS, 1);
    }
    if let Some(x) = best_x {
        for y in (top..=bottom).step_by(4) {
            cv.line((x, y), (x, (y + 1).min(bottom)), BEST);
        }
    }
    cv.line((left, top), (left, bottom), AXIS);
    cv.line((left, bottom), (right, bottom), AXIS);
    let points: Vec<(i64, i64)> = xs.iter().zip(ys).filter(|(_, y)| y.is_finite()).map(|(&x, &y)| (px(x), py(y))).collect();
    for seg in points.windows(2) {
        cv.line(seg[0], seg[1], color);
        cv.line((seg[0].0, seg[0].1 + 1), (seg[1].0, seg[1].1 + 1), color);
    }
    for &(x, y) in &points {
        for d in -2..=2 {
            cv.line((x - 2, y + d), (x + 2, y + d), color);
        }
    }
}

/// `rows` of images (all one size), one row each, left-aligned on a black background.
pub fn rows_grid(rows: &[Vec<Rgb8>]) -> Result<Rgb8> {
    let Some(first) = rows.iter().flatten().next() else { bail!("no images for the grid") };
    let (w, h) = (first.width as usize, first.height as usize);
    if let Some(o) = rows.iter().flatten().find(|i| (i.width, i.height) != (first.width, first.height)) {
        bail!("images of different sizes ({w}x{h} and {}x{}) cannot share one grid", o.width, o.height);
    }
    let cols = rows.iter().map(Vec::len).max().unwrap_or(1);
    let (gw, gh) = (w * cols, h * rows.len());
    let mut data = vec![0u8; gw * gh * 3];
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            for y in 0..h {
                let dst = ((r * h + y) * gw + c * w) * 3;
                data[dst..dst + w * 3].copy_from_slice(&img.data[y * w * 3..(y + 1) * w * 3]);
            }
        }
    }
    Rgb8::new(gw as u32, gh as u32, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_rows_are_prompts_and_columns_seeds() {
        let img = |v: u8| Rgb8::new(2, 3, vec![v; 18]).unwrap();
        let g = rows_grid(&[vec![img(1), img(2)], vec![img(3)]]).unwrap();
        assert_eq!((g.width, g.height), (4, 6));
        let at = |x: usize, y: usize| g.data[(y * 4 + x) * 3];
        assert_eq!([at(0, 0), at(2, 2), at(0, 3), at(2, 5)], [1, 2, 3, 0]);
        assert!(rows_grid(&[vec![img(1), Rgb8::new(1, 1, vec![0; 3]).unwrap()]]).is_err());
    }

    #[test]
    fn the_plot_draws_both_series_and_the_best_step() {
        let s = |step, i, t| StepScores { step, file: String::new(), image_similarity: i, text_similarity: t };
        let p = eval_plot(&[s(2, 0.5, 0.3), s(4, 0.7, 0.28), s(6, f64::NAN, 0.1)], Some(1), 640, 400);
        assert_eq!((p.width, p.height, p.data.len()), (640, 400, 640 * 400 * 3));
        for c in [IMAGE, TEXT, BEST] {
            assert!(p.data.chunks(3).any(|px| px == c), "colour {c:?} missing");
        }
        let empty = eval_plot(&[], None, 10, 10);
        assert_eq!((empty.width, empty.height), (200, 160));
    }
}
