//! `loss.png`: the loss curve drawn by hand (lines, ticks, 8x8 glyphs), so that no plotting
//! library is needed.
use super::Rgb8;

/// TensorBoard-style debiased EMA; the weight grows with the number of points (0.6 to 0.99).
pub fn smooth(values: &[f64]) -> Vec<f64> {
    let w = (1.0 - 25.0 / values.len().max(1) as f64).clamp(0.6, 0.99);
    let (mut ema, mut debias) = (0.0, 1.0);
    values
        .iter()
        .map(|&v| {
            ema = w * ema + (1.0 - w) * v;
            debias *= w;
            ema / (1.0 - debias)
        })
        .collect()
}

/// Text is drawn with font8x8's public-domain 8x8 glyphs (bit 0 is the leftmost pixel).
pub(crate) const CHAR_W: i64 = 8;
pub(crate) const CHAR_H: i64 = 8;

/// An RGB canvas to draw plots on (also `eval.png`'s).
pub(crate) struct Canvas {
    pub(crate) w: i64,
    pub(crate) h: i64,
    pub(crate) data: Vec<u8>,
}

impl Canvas {
    pub(crate) fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if (0..self.w).contains(&x) && (0..self.h).contains(&y) {
            let i = ((y * self.w + x) * 3) as usize;
            self.data[i..i + 3].copy_from_slice(&c);
        }
    }

    pub(crate) fn line(&mut self, (mut x0, mut y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let mut err = dx + dy;
        loop {
            self.put(x0, y0, c);
            if x0 == x1 && y0 == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x0 += sx;
            }
            if e2 <= dx {
                err += dx;
                y0 += sy;
            }
        }
    }

    /// `s` with its top-left corner at (x, y), each font pixel `scale` x `scale`.
    pub(crate) fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3], scale: i64) {
        use font8x8::UnicodeFonts;
        for (i, ch) in s.chars().enumerate() {
            let Some(rows) = font8x8::BASIC_FONTS.get(ch) else { continue };
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        for d in 0..scale * scale {
                            let (px, py) = (x + (i as i64 * CHAR_W + col) * scale + d % scale, y + r as i64 * scale + d / scale);
                            self.put(px, py, c);
                        }
                    }
                }
            }
        }
    }
}

pub(crate) fn text_width(s: &str, scale: i64) -> i64 {
    s.chars().count() as i64 * CHAR_W * scale
}

/// "Nice" ticks (1, 2 or 5 times a power of ten) in `[lo, hi]`, and the decimals to print.
pub(crate) fn ticks(lo: f64, hi: f64, target: f64) -> (Vec<f64>, usize) {
    let raw = (hi - lo) / target;
    if !(raw > 0.0 && raw.is_finite()) {
        return (vec![lo], 0);
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let step = mag
        * if f < 1.5 {
            1.0
        } else if f < 3.5 {
            2.0
        } else if f < 7.5 {
            5.0
        } else {
            10.0
        };
    let decimals = (-step.log10().floor()).clamp(0.0, 12.0) as usize;
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    ((first..=last).map(|k| k as f64 * step).collect(), decimals)
}

/// Loss per micro-step (light blue) and its smoothed curve (dark blue), with a title, axis
/// labels, tick labels and a legend.
pub fn loss_plot(points: &[(u64, f64)], width: u32, height: u32) -> Rgb8 {
    loss_plot_with_eval(points, &[], width, height)
}

/// [`loss_plot`] with `--eval_loss_steps`' evaluation losses (orange, marked), at the
/// micro-step of their update, on the same axes.
pub fn loss_plot_with_eval(points: &[(u64, f64)], eval: &[(u64, f64)], width: u32, height: u32) -> Rgb8 {
    const EVAL: [u8; 3] = [230, 110, 20];
    const WHITE: [u8; 3] = [255, 255, 255];
    const GRID: [u8; 3] = [230, 230, 230];
    const AXIS: [u8; 3] = [90, 90, 90];
    const RAW: [u8; 3] = [170, 200, 240];
    const EMA: [u8; 3] = [20, 60, 160];
    let (w, h) = (width.max(64) as i64, height.max(48) as i64);
    let mut cv = Canvas { w, h, data: WHITE.repeat((w * h) as usize) };

    let points: Vec<(f64, f64)> = points.iter().filter(|p| p.1.is_finite()).map(|&(x, y)| (x as f64, y)).collect();
    let eval: Vec<(f64, f64)> = eval.iter().filter(|p| p.1.is_finite()).map(|&(x, y)| (x as f64, y)).collect();
    let all: Vec<(f64, f64)> = points.iter().chain(&eval).copied().collect();
    let (mut x_lo, mut x_hi) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y_lo, mut y_hi) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if all.is_empty() {
        (x_lo, x_hi, y_lo, y_hi) = (0.0, 1.0, 0.0, 1.0);
    }
    if x_hi <= x_lo {
        (x_lo, x_hi) = (x_lo - 1.0, x_hi + 1.0);
    }
    if y_hi <= y_lo {
        let pad = if y_lo == 0.0 { 1.0 } else { y_lo.abs() * 0.1 };
        (y_lo, y_hi) = (y_lo - pad, y_hi + pad);
    }
    let pad = (y_hi - y_lo) * 0.05;
    (y_lo, y_hi) = (y_lo - pad, y_hi + pad);

    let (y_ticks, y_dec) = ticks(y_lo, y_hi, 5.0);
    let mut y_labels: Vec<String> = y_ticks.iter().map(|v| format!("{v:.y_dec$}")).collect();
    if y_labels.iter().any(|s| s.len() > 12) {
        y_labels.iter_mut().for_each(String::clear); // absurd magnitudes: ticks without labels
    }
    let label_w = y_labels.iter().map(|s| s.len() as i64).max().unwrap_or(1) * CHAR_W;
    // Title (2x) above, "loss" over the y axis, tick labels and "micro-step" below.
    let (left, right, top, bottom) = (label_w + 10, w - 12, 2 * CHAR_H + 16, h - 2 * CHAR_H - 20);
    let title = "Training loss";
    cv.text((w - text_width(title, 2)) / 2, 4, title, AXIS, 2);
    cv.text(4, top - CHAR_H - 6, "loss", AXIS, 1);
    let x_title = "micro-step";
    cv.text((left + right - text_width(x_title, 1)) / 2, h - CHAR_H - 4, x_title, AXIS, 1);
    // Clamped, so that no line is ever longer than the canvas.
    let px = |x: f64| (left + ((x - x_lo) / (x_hi - x_lo) * (right - left) as f64).round() as i64).clamp(-1, w);
    let py = |y: f64| (bottom - ((y - y_lo) / (y_hi - y_lo) * (bottom - top) as f64).round() as i64).clamp(-1, h);

    for (v, label) in y_ticks.iter().zip(&y_labels) {
        let y = py(*v);
        cv.line((left, y), (right, y), GRID);
        cv.line((left - 4, y), (left, y), AXIS);
        cv.text(left - 6 - text_width(label, 1), y - CHAR_H / 2, label, AXIS, 1);
    }
    let (x_ticks, _) = ticks(x_lo, x_hi, 6.0);
    for v in x_ticks.iter().filter(|v| v.fract() == 0.0) {
        let x = px(*v);
        cv.line((x, top), (x, bottom), GRID);
        cv.line((x, bottom), (x, bottom + 4), AXIS);
        let label = format!("{v:.0}");
        cv.text(x - text_width(&label, 1) / 2, bottom + 8, &label, AXIS, 1);
    }
    cv.line((left, top), (left, bottom), AXIS);
    cv.line((left, bottom), (right, bottom), AXIS);

    let raw: Vec<(i64, i64)> = points.iter().map(|&(x, y)| (px(x), py(y))).collect();
    for seg in raw.windows(2) {
        cv.line(seg[0], seg[1], RAW);
    }
    if let [only] = raw.as_slice() {
        cv.put(only.0, only.1, RAW);
    }
    let ys: Vec<f64> = points.iter().map(|p| p.1).collect();
    let ema: Vec<(i64, i64)> = points.iter().zip(smooth(&ys)).map(|(p, y)| (px(p.0), py(y))).collect();
    for seg in ema.windows(2) {
        cv.line(seg[0], seg[1], EMA);
        cv.line((seg[0].0, seg[0].1 + 1), (seg[1].0, seg[1].1 + 1), EMA);
    }
    let marks: Vec<(i64, i64)> = eval.iter().map(|&(x, y)| (px(x), py(y))).collect();
    for seg in marks.windows(2) {
        cv.line(seg[0], seg[1], EVAL);
    }
    for &(x, y) in &marks {
        for d in 0..9 {
            cv.put(x + d % 3 - 1, y + d / 3 - 1, EVAL);
        }
    }
    // Legend, top right inside the plot.
    let mut entries = vec![("each micro-step", RAW), ("smoothed (EMA)", EMA)];
    if !eval.is_empty() {
        entries.push(("eval_loss (fixed batch)", EVAL));
    }
    let legend_w = entries.iter().map(|(t, _)| text_width(t, 1)).max().unwrap_or(0) + 30;
    let lx = right - legend_w - 6;
    let (bx0, by0, bx1, by1) = (lx - 6, top + 2, right - 2, top + 10 + entries.len() as i64 * (CHAR_H + 6));
    for y in by0..=by1 {
        cv.line((bx0, y), (bx1, y), WHITE);
    }
    for (a, b) in [((bx0, by0), (bx1, by0)), ((bx1, by0), (bx1, by1)), ((bx1, by1), (bx0, by1)), ((bx0, by1), (bx0, by0))] {
        cv.line(a, b, GRID);
    }
    for (k, (label, color)) in entries.iter().enumerate() {
        let ly = top + 6 + k as i64 * (CHAR_H + 6);
        for dy in 0..2 {
            cv.line((lx, ly + CHAR_H / 2 + dy), (lx + 20, ly + CHAR_H / 2 + dy), *color);
        }
        cv.text(lx + 26, ly, label, AXIS, 1);
    }
    Rgb8 { width: w as u32, height: h as u32, data: cv.data }
}
