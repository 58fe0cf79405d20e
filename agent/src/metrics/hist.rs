//! Histogram aggregations, fed with raw integer measurements (nanoseconds
//! for durations, bytes for sizes) and reported in the metric's unit
//! (seconds, bytes).
//!
//! - [`Explicit`]: fixed bucket boundaries. A bucket holds the values above
//!   the previous boundary and up to its own, boundary included, as both
//!   OpenTelemetry and Prometheus (`le`) define it. Boundaries are turned
//!   into raw integer thresholds once, so a duration exactly on a boundary
//!   always lands in that boundary's bucket, with no floating-point doubt.
//! - [`Exponential`]: base-2 exponential buckets (OpenTelemetry's
//!   exponential histogram): the scale starts fine and is lowered whenever
//!   the values seen would need more than `max_size` buckets.
//!
//! Both keep count, sum, min and max. The sum is kept in raw units as an
//! integer, so it never drifts.

/// How many raw units make one unit of the metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawUnit {
    /// Raw values are nanoseconds, the metric is in seconds.
    Nanos,
    /// Raw values are the metric's own unit (bytes, counts).
    One,
}

impl RawUnit {
    pub fn per_unit(self) -> f64 {
        match self {
            RawUnit::Nanos => 1e9,
            RawUnit::One => 1.0,
        }
    }

    /// A raw value in the metric's unit.
    pub fn to_unit(self, raw: u64) -> f64 {
        match self {
            RawUnit::Nanos => raw as f64 / 1e9,
            RawUnit::One => raw as f64,
        }
    }

    /// A raw sum in the metric's unit.
    pub fn sum_to_unit(self, raw: u128) -> f64 {
        match self {
            RawUnit::Nanos => raw as f64 / 1e9,
            RawUnit::One => raw as f64,
        }
    }
}

/// Explicit bucket boundaries, in the metric's unit and as raw thresholds.
#[derive(Clone, Debug, PartialEq)]
pub struct Bounds {
    /// Strictly increasing, finite, not negative.
    values: Box<[f64]>,
    /// `values` in raw units: a raw value `v` belongs to bucket `i` when
    /// `thresholds[i-1] < v <= thresholds[i]`.
    thresholds: Box<[u64]>,
}

impl Bounds {
    /// Boundaries for raw values in `unit`. Negative or non-finite values
    /// and values out of order are left out (the configuration refuses them
    /// before this is called).
    pub fn new(values: &[f64], unit: RawUnit) -> Bounds {
        let mut kept: Vec<f64> = Vec::with_capacity(values.len());
        for &v in values {
            if v.is_finite() && v >= 0.0 && kept.last().is_none_or(|&last| v > last) {
                kept.push(v);
            }
        }
        let mut thresholds: Vec<u64> = kept
            .iter()
            .map(|&v| raw_threshold(v, unit.per_unit()))
            .collect();
        // Two boundaries closer than one raw unit would share a threshold;
        // keep the first and drop the second.
        let mut i = 1;
        while i < thresholds.len() {
            if thresholds[i] <= thresholds[i - 1] {
                thresholds.remove(i);
                kept.remove(i);
            } else {
                i += 1;
            }
        }
        Bounds {
            values: kept.into(),
            thresholds: thresholds.into(),
        }
    }

    pub fn values(&self) -> &[f64] {
        &self.values
    }

    /// Buckets, the `+Inf` one included.
    pub fn buckets(&self) -> usize {
        self.values.len() + 1
    }

    /// The bucket of raw value `raw`.
    pub fn bucket_of(&self, raw: u64) -> usize {
        // Few boundaries: a linear scan beats a binary search here.
        if self.thresholds.len() <= 24 {
            self.thresholds
                .iter()
                .position(|&t| raw <= t)
                .unwrap_or(self.thresholds.len())
        } else {
            self.thresholds.partition_point(|&t| t < raw)
        }
    }
}

/// The largest raw value that is still `<= bound` (in the metric's unit).
/// A boundary written in decimal (0.005 s) is meant exactly, so a product
/// within rounding error of an integer is taken as that integer.
fn raw_threshold(bound: f64, per_unit: f64) -> u64 {
    let x = bound * per_unit;
    let nearest = x.round();
    let t = if (x - nearest).abs() <= 1e-6 * nearest.abs().max(1.0) {
        nearest
    } else {
        x.floor()
    };
    if t >= u64::MAX as f64 {
        u64::MAX
    } else {
        t as u64
    }
}

/// A histogram with fixed boundaries. Bucket counts are per bucket (not
/// cumulative); the last one is the `+Inf` bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct Explicit {
    pub counts: Box<[u64]>,
    pub count: u64,
    pub sum: u128,
    pub min: u64,
    pub max: u64,
}

impl Explicit {
    pub fn new(bounds: &Bounds) -> Explicit {
        Explicit {
            counts: vec![0; bounds.buckets()].into(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Adds one raw value; returns its bucket.
    pub fn record(&mut self, bounds: &Bounds, raw: u64) -> usize {
        let b = bounds.bucket_of(raw);
        if let Some(c) = self.counts.get_mut(b) {
            *c += 1;
        }
        self.count += 1;
        self.sum += u128::from(raw);
        self.min = self.min.min(raw);
        self.max = self.max.max(raw);
        b
    }

    /// What was added since `earlier` (an older copy of this histogram).
    /// Min and max cannot be subtracted: they are left as they are.
    pub fn since(&self, earlier: &Explicit) -> Explicit {
        Explicit {
            counts: self
                .counts
                .iter()
                .zip(earlier.counts.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            count: self.count.saturating_sub(earlier.count),
            sum: self.sum.saturating_sub(earlier.sum),
            min: self.min,
            max: self.max,
        }
    }
}

/// The finest scale an exponential histogram starts at (the largest the
/// OpenTelemetry data model allows).
pub const MAX_SCALE: i32 = 20;
/// The coarsest scale: base 2^(2^10); nothing real needs coarser.
pub const MIN_SCALE: i32 = -10;

/// A base-2 exponential histogram of positive values (and a zero bucket).
///
/// At scale `s` the base is `2^(2^-s)` and bucket `i` holds the values in
/// `(base^i, base^(i+1)]`. `counts[k]` is bucket `offset + k`.
#[derive(Clone, Debug, PartialEq)]
pub struct Exponential {
    pub scale: i32,
    pub offset: i32,
    pub counts: Vec<u64>,
    pub zero_count: u64,
    pub count: u64,
    pub sum: u128,
    pub min: u64,
    pub max: u64,
    max_size: usize,
}

impl Exponential {
    /// An empty histogram that keeps at most `max_size` buckets (at least 2).
    pub fn new(max_size: usize) -> Exponential {
        Exponential {
            scale: MAX_SCALE,
            offset: 0,
            counts: Vec::new(),
            zero_count: 0,
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
            max_size: max_size.max(2),
        }
    }

    /// Adds one raw value, `value` being the same in the metric's unit.
    pub fn record(&mut self, raw: u64, value: f64) {
        self.count += 1;
        self.sum += u128::from(raw);
        self.min = self.min.min(raw);
        self.max = self.max.max(raw);
        if raw == 0 || value <= 0.0 || !value.is_finite() {
            self.zero_count += 1;
            return;
        }
        let mut index = bucket_index(value, self.scale);
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.push(1);
            return;
        }
        let low = self.offset.min(index);
        let high = (self.offset + self.counts.len() as i32 - 1).max(index);
        let change = scale_change(low, high, self.max_size);
        if change > 0 {
            self.downscale(change);
            index = bucket_index(value, self.scale);
        }
        if index < self.offset {
            let grow = (self.offset - index) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = index;
        }
        let k = (index - self.offset) as usize;
        if k >= self.counts.len() {
            self.counts.resize(k + 1, 0);
        }
        self.counts[k] += 1;
    }

    /// Lowers the scale by `change`, merging neighbouring buckets.
    pub fn downscale(&mut self, change: i32) {
        let change = change.min(self.scale - MIN_SCALE).max(0);
        if change == 0 {
            return;
        }
        self.scale -= change;
        if self.counts.is_empty() {
            return;
        }
        let new_offset = self.offset >> change;
        let last = (self.offset + self.counts.len() as i32 - 1) >> change;
        let mut merged = vec![0u64; (last - new_offset + 1) as usize];
        for (k, c) in self.counts.iter().enumerate() {
            let index = (self.offset + k as i32) >> change;
            merged[(index - new_offset) as usize] += c;
        }
        self.offset = new_offset;
        self.counts = merged;
    }

    /// The upper boundary of bucket `index`, in the metric's unit.
    pub fn upper_bound(&self, index: i32) -> f64 {
        bucket_lower(index + 1, self.scale)
    }

    /// What was added since `earlier` (an older copy, at this scale or a
    /// finer one). Min and max are left as they are.
    pub fn since(&self, earlier: &Exponential) -> Exponential {
        let mut before = earlier.clone();
        if before.scale > self.scale {
            before.downscale(before.scale - self.scale);
        }
        let mut counts = self.counts.clone();
        for (k, c) in before.counts.iter().enumerate() {
            let index = before.offset + k as i32;
            let at = index - self.offset;
            if at >= 0
                && let Some(slot) = counts.get_mut(at as usize)
            {
                *slot = slot.saturating_sub(*c);
            }
        }
        Exponential {
            scale: self.scale,
            offset: self.offset,
            counts,
            zero_count: self.zero_count.saturating_sub(earlier.zero_count),
            count: self.count.saturating_sub(earlier.count),
            sum: self.sum.saturating_sub(earlier.sum),
            min: self.min,
            max: self.max,
            max_size: self.max_size,
        }
    }
}

/// By how much the scale must drop for buckets `low..=high` to fit in `max_size`.
fn scale_change(mut low: i32, mut high: i32, max_size: usize) -> i32 {
    let mut change = 0;
    while (i64::from(high) - i64::from(low) + 1) as usize > max_size {
        low >>= 1;
        high >>= 1;
        change += 1;
    }
    change
}

/// The bucket of positive finite `value` at `scale`.
pub fn bucket_index(value: f64, scale: i32) -> i32 {
    let bits = value.to_bits();
    let raw_exp = ((bits >> 52) & 0x7ff) as i32;
    let mantissa = bits & ((1u64 << 52) - 1);
    // Subnormals are far below anything measured here; treat them as the
    // smallest normal number.
    let (exp, exact_power) = if raw_exp == 0 {
        (-1022, false)
    } else {
        (raw_exp - 1023, mantissa == 0)
    };
    if scale <= 0 {
        // value in [2^exp, 2^(exp+1)); an exact power of two belongs to the
        // bucket below (upper boundaries are inclusive).
        let e = if exact_power { exp - 1 } else { exp };
        return e >> (-scale);
    }
    if exact_power {
        return (exp << scale) - 1;
    }
    let scaled = value.log2() * f64::from(1u32 << scale);
    let index = scaled.ceil() as i64 - 1;
    // log2 may be off by a hair near a boundary: check against the
    // boundaries themselves.
    let mut index = index.clamp(i64::from(i32::MIN) + 1, i64::from(i32::MAX) - 1) as i32;
    if value <= bucket_lower(index, scale) {
        index -= 1;
    } else if value > bucket_lower(index + 1, scale) {
        index += 1;
    }
    index
}

/// The lower boundary of bucket `index` at `scale` (`base^index`).
pub fn bucket_lower(index: i32, scale: i32) -> f64 {
    if scale <= 0 {
        let exp = i64::from(index) << (-scale);
        return 2f64.powi(exp.clamp(-1100, 1100) as i32);
    }
    (f64::from(index) / f64::from(1u32 << scale)).exp2()
}

/// The value at quantile `q` (0..=1) of a histogram given as
/// `(upper bound, count)` buckets in increasing order, the last of which may
/// be unbounded (`f64::INFINITY`). Interpolates linearly inside the bucket,
/// as Prometheus' `histogram_quantile` does; a quantile in the unbounded
/// bucket gives the last finite bound. `None` when there is no value.
pub fn quantile(q: f64, buckets: &[(f64, u64)]) -> Option<f64> {
    let total: u64 = buckets.iter().map(|(_, c)| c).sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0u64;
    let mut lower = 0.0;
    for (i, &(upper, count)) in buckets.iter().enumerate() {
        if count > 0 && (seen + count) as f64 >= rank {
            if !upper.is_finite() {
                return Some(if i == 0 { 0.0 } else { buckets[i - 1].0 });
            }
            let into = (rank - seen as f64) / count as f64;
            return Some(lower + (upper - lower) * into.clamp(0.0, 1.0));
        }
        seen += count;
        if upper.is_finite() {
            lower = upper;
        }
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECONDS: [f64; 14] = [
        0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    ];

    #[test]
    fn a_duration_on_a_boundary_lands_in_that_bucket() {
        let b = Bounds::new(&SECONDS, RawUnit::Nanos);
        assert_eq!(b.buckets(), 15);
        for (i, &bound) in SECONDS.iter().enumerate() {
            let raw = (bound * 1e9).round() as u64;
            assert_eq!(b.bucket_of(raw), i, "exactly {bound} s");
            assert_eq!(b.bucket_of(raw + 1), i + 1, "1 ns above {bound} s");
            assert_eq!(b.bucket_of(raw - 1), i, "1 ns below {bound} s");
        }
        assert_eq!(b.bucket_of(0), 0);
        assert_eq!(b.bucket_of(u64::MAX), 14);
        // 0.075 * 1e9 is 75000000.00000001 in floating point.
        assert_eq!(b.bucket_of(75_000_000), 4);
    }

    #[test]
    fn byte_boundaries_and_zero() {
        let b = Bounds::new(&[0.0, 64.0, 1024.0], RawUnit::One);
        assert_eq!(b.bucket_of(0), 0);
        assert_eq!(b.bucket_of(1), 1);
        assert_eq!(b.bucket_of(64), 1);
        assert_eq!(b.bucket_of(65), 2);
        assert_eq!(b.bucket_of(1024), 2);
        assert_eq!(b.bucket_of(1025), 3);
        // A fractional byte boundary: 10.5 holds 10, not 11.
        let b = Bounds::new(&[10.5], RawUnit::One);
        assert_eq!(b.bucket_of(10), 0);
        assert_eq!(b.bucket_of(11), 1);
    }

    #[test]
    fn bad_boundaries_are_left_out() {
        let b = Bounds::new(
            &[-1.0, 0.5, 0.5, f64::NAN, 0.25, 1.0, f64::INFINITY],
            RawUnit::Nanos,
        );
        assert_eq!(b.values(), &[0.5, 1.0]);
        // Closer than a nanosecond: the second one goes.
        let b = Bounds::new(&[1e-9, 1.2e-9], RawUnit::Nanos);
        assert_eq!(b.values(), &[1e-9]);
        let many: Vec<f64> = (1..=40).map(f64::from).collect();
        let b = Bounds::new(&many, RawUnit::One);
        assert_eq!(b.bucket_of(0), 0);
        assert_eq!(b.bucket_of(1), 0);
        assert_eq!(b.bucket_of(2), 1);
        assert_eq!(b.bucket_of(40), 39);
        assert_eq!(b.bucket_of(41), 40);
    }

    #[test]
    fn explicit_counts_sum_min_max() {
        let b = Bounds::new(&[0.01, 0.1], RawUnit::Nanos);
        let mut h = Explicit::new(&b);
        for raw in [5_000_000, 10_000_000, 50_000_000, 2_000_000_000] {
            h.record(&b, raw);
        }
        assert_eq!(&*h.counts, &[2, 1, 1]);
        assert_eq!(h.count, 4);
        assert_eq!(h.sum, 2_065_000_000);
        assert_eq!((h.min, h.max), (5_000_000, 2_000_000_000));
        let before = h.clone();
        h.record(&b, 1);
        let d = h.since(&before);
        assert_eq!(&*d.counts, &[1, 0, 0]);
        assert_eq!((d.count, d.sum), (1, 1));
    }

    #[test]
    fn exponential_index_matches_boundaries() {
        for scale in [-2, 0, 1, 3, 8, 20] {
            for &v in &[1e-9, 0.001, 0.5, 1.0, 2.0, 3.0, 4.0, 1000.0, 1234.5678] {
                let i = bucket_index(v, scale);
                let lower = bucket_lower(i, scale);
                let upper = bucket_lower(i + 1, scale);
                assert!(
                    lower < v && v <= upper * (1.0 + 1e-12),
                    "scale {scale} value {v}: bucket {i} is ({lower}, {upper}]"
                );
            }
        }
        // Exact powers of two are the upper boundary of their bucket.
        assert_eq!(bucket_index(1.0, 0), -1);
        assert_eq!(bucket_index(2.0, 0), 0);
        assert_eq!(bucket_index(4.0, 1), 3);
        assert_eq!(bucket_index(4.0, -1), 0);
        assert_eq!(bucket_index(5.0, -1), 1);
    }

    #[test]
    fn exponential_downscales_to_fit() {
        let mut h = Exponential::new(20);
        for raw in [1_000u64, 1_000_000, 1_000_000_000, 5_000_000_000, 0] {
            h.record(raw, raw as f64 / 1e9);
        }
        assert!(h.counts.len() <= 20, "{h:?}");
        assert!(h.scale < MAX_SCALE);
        assert_eq!(h.count, 5);
        assert_eq!(h.zero_count, 1);
        assert_eq!(h.counts.iter().sum::<u64>(), 4);
        // Every value is inside the bucket it was counted in.
        for v in [1e-6, 1e-3, 1.0, 5.0] {
            let i = bucket_index(v, h.scale);
            let k = (i - h.offset) as usize;
            assert!(h.counts[k] >= 1, "{v} not counted in bucket {i}: {h:?}");
        }
    }

    #[test]
    fn exponential_delta_across_a_scale_change() {
        let mut h = Exponential::new(8);
        h.record(1_000_000, 0.001);
        h.record(1_100_000, 0.0011);
        let before = h.clone();
        h.record(5_000_000_000, 5.0);
        assert!(h.scale < before.scale);
        let d = h.since(&before);
        assert_eq!(d.count, 1);
        assert_eq!(d.counts.iter().sum::<u64>(), 1);
        let i = bucket_index(5.0, d.scale);
        assert_eq!(d.counts[(i - d.offset) as usize], 1);
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let b = [(1.0, 10), (2.0, 10), (f64::INFINITY, 0)];
        assert_eq!(quantile(0.5, &b), Some(1.0));
        assert_eq!(quantile(0.75, &b), Some(1.5));
        assert_eq!(quantile(0.25, &b), Some(0.5));
        assert_eq!(quantile(0.99, &[(1.0, 0), (f64::INFINITY, 3)]), Some(1.0));
        assert_eq!(quantile(0.5, &[(1.0, 0)]), None);
    }
}
