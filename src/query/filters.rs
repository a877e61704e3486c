//! What a query's filters say about `partition`, `"offset"` and `"timestamp"`: sets of
//! inclusive ranges, used to skip partitions, files (by the manifest's offset and time ranges),
//! rows of files (offsets are dense within a file: row = offset − first offset), and hot
//! offsets. Every set is a superset of what the filters let through (a filter this module does
//! not understand constrains nothing), so the filters are still applied above the scan
//! (pushdown is `Inexact`).

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};

/// Sorted, disjoint, inclusive ranges of i64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranges(Vec<(i64, i64)>);

impl Ranges {
    pub fn all() -> Ranges {
        Ranges(vec![(i64::MIN, i64::MAX)])
    }

    pub fn between(lo: i64, hi: i64) -> Ranges {
        if lo > hi {
            Ranges(Vec::new())
        } else {
            Ranges(vec![(lo, hi)])
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.0.iter().copied()
    }

    pub fn min(&self) -> Option<i64> {
        self.0.first().map(|r| r.0)
    }

    pub fn max(&self) -> Option<i64> {
        self.0.last().map(|r| r.1)
    }

    /// Whether any value of `[lo, hi]` is in the set.
    pub fn overlaps(&self, lo: i64, hi: i64) -> bool {
        self.0.iter().any(|&(a, b)| a <= hi && lo <= b)
    }

    pub fn contains(&self, v: i64) -> bool {
        self.overlaps(v, v)
    }

    pub fn intersect(&self, other: &Ranges) -> Ranges {
        let mut out = Vec::new();
        for &(a, b) in &self.0 {
            for &(c, d) in &other.0 {
                let (lo, hi) = (a.max(c), b.min(d));
                if lo <= hi {
                    out.push((lo, hi));
                }
            }
        }
        Ranges::normalized(out)
    }

    pub fn union(&self, other: &Ranges) -> Ranges {
        Ranges::normalized(self.0.iter().chain(&other.0).copied().collect())
    }

    fn normalized(mut ranges: Vec<(i64, i64)>) -> Ranges {
        ranges.sort_unstable();
        let mut out: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match out.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        Ranges(out)
    }
}

/// What the filters of one scan allow of the three columns the data is laid out by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushdown {
    pub partition: Ranges,
    pub offset: Ranges,
    /// Milliseconds since the epoch, as the column holds them.
    pub timestamp: Ranges,
}

impl Pushdown {
    /// All filters hold at once: the sets of each are intersected.
    pub fn of(filters: &[Expr]) -> Pushdown {
        let of = |column: &str| {
            filters
                .iter()
                .filter_map(|f| ranges_of(f, column))
                .fold(Ranges::all(), |acc, r| acc.intersect(&r))
        };
        Pushdown {
            partition: of("partition"),
            offset: of("offset"),
            timestamp: of("timestamp"),
        }
    }
}

/// Whether `expr` is the column `name` (or a cast of it that keeps its order: integer widening,
/// another timestamp unit).
fn is_column(expr: &Expr, name: &str) -> bool {
    match expr {
        Expr::Column(c) => c.name == name,
        Expr::Cast(c) => order_preserving(c.field.data_type()) && is_column(&c.expr, name),
        _ => false,
    }
}

fn order_preserving(to: &datafusion::arrow::datatypes::DataType) -> bool {
    use datafusion::arrow::datatypes::DataType::*;
    matches!(to, Int32 | Int64 | Timestamp(_, _))
}

/// A literal as milliseconds or plain integers: (rounded down, rounded up, exact).
fn value(expr: &Expr) -> Option<(i64, i64, bool)> {
    let Expr::Literal(v, _) = expr else {
        return None;
    };
    let exact = |v: i64| Some((v, v, true));
    let scaled = |v: i64, per_ms: i64| {
        let (lo, hi) = (
            v.div_euclid(per_ms),
            v.div_euclid(per_ms) + i64::from(v.rem_euclid(per_ms) != 0),
        );
        Some((lo, hi, lo == hi))
    };
    match v {
        ScalarValue::Int8(Some(v)) => exact(i64::from(*v)),
        ScalarValue::Int16(Some(v)) => exact(i64::from(*v)),
        ScalarValue::Int32(Some(v)) => exact(i64::from(*v)),
        ScalarValue::Int64(Some(v)) => exact(*v),
        ScalarValue::UInt8(Some(v)) => exact(i64::from(*v)),
        ScalarValue::UInt16(Some(v)) => exact(i64::from(*v)),
        ScalarValue::UInt32(Some(v)) => exact(i64::from(*v)),
        ScalarValue::UInt64(Some(v)) => exact(i64::try_from(*v).ok()?),
        ScalarValue::TimestampSecond(Some(v), _) => exact(v.checked_mul(1000)?),
        ScalarValue::TimestampMillisecond(Some(v), _) => exact(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => scaled(*v, 1000),
        ScalarValue::TimestampNanosecond(Some(v), _) => scaled(*v, 1_000_000),
        _ => None,
    }
}

/// The ranges of `column` that `expr` lets through, `None` when it says nothing of it.
fn ranges_of(expr: &Expr, column: &str) -> Option<Ranges> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => match (ranges_of(left, column), ranges_of(right, column)) {
                (Some(l), Some(r)) => Some(l.intersect(&r)),
                (l, r) => l.or(r),
            },
            Operator::Or => Some(ranges_of(left, column)?.union(&ranges_of(right, column)?)),
            op => {
                let (op, v) = if is_column(left, column) {
                    (*op, value(right)?)
                } else if is_column(right, column) {
                    (op.swap()?, value(left)?)
                } else {
                    return None;
                };
                compare(op, v)
            }
        },
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_column(expr, column) => {
            let ((lo, _, _), (_, hi, _)) = (value(low)?, value(high)?);
            Some(Ranges::between(lo, hi))
        }
        Expr::InList(list) if !list.negated && is_column(&list.expr, column) => {
            list.list.iter().try_fold(Ranges::between(1, 0), |acc, e| {
                let (lo, hi, _) = value(e)?;
                Some(acc.union(&Ranges::between(lo, hi)))
            })
        }
        _ => None,
    }
}

/// `column op v`, as a superset when `v` is not exact in the column's unit.
fn compare(op: Operator, (lo, hi, exact): (i64, i64, bool)) -> Option<Ranges> {
    let strict = |bound: i64, by: i64| {
        if exact {
            bound.saturating_add(by)
        } else {
            bound
        }
    };
    Some(match op {
        Operator::Eq => Ranges::between(lo, hi),
        Operator::Gt => Ranges::between(strict(lo, 1), i64::MAX),
        Operator::GtEq => Ranges::between(lo, i64::MAX),
        Operator::Lt => Ranges::between(i64::MIN, strict(hi, -1)),
        Operator::LtEq => Ranges::between(i64::MIN, hi),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    fn offsets(filters: &[Expr]) -> Ranges {
        Pushdown::of(filters).offset
    }

    #[test]
    fn comparisons_and_combinations() {
        assert_eq!(
            offsets(&[col("offset").eq(lit(5i64))]),
            Ranges::between(5, 5)
        );
        assert_eq!(
            offsets(&[col("offset").gt(lit(5i64)), col("offset").lt_eq(lit(9i64))]),
            Ranges::between(6, 9)
        );
        assert_eq!(
            offsets(&[lit(5i64).lt(col("offset"))]),
            Ranges::between(6, i64::MAX)
        );
        let either = col("offset")
            .eq(lit(3i64))
            .or(col("offset").between(lit(10i64), lit(12i64)));
        assert_eq!(
            offsets(&[either]),
            Ranges::between(3, 3).union(&Ranges::between(10, 12))
        );
        let listed = col("offset").in_list(vec![lit(7i64), lit(1i64), lit(2i64)], false);
        assert_eq!(
            offsets(&[listed]),
            Ranges::between(1, 2).union(&Ranges::between(7, 7))
        );
        // Not understood: nothing is pruned.
        assert_eq!(
            offsets(&[(col("offset") + lit(0i64)).eq(lit(5i64))]),
            Ranges::all()
        );
        let half = col("offset").eq(lit(3i64)).or(col("key").is_null());
        assert_eq!(offsets(&[half]), Ranges::all());
        let contradiction = col("offset").gt(lit(9i64)).and(col("offset").lt(lit(3i64)));
        assert!(offsets(&[contradiction]).is_empty());
        assert_eq!(
            Pushdown::of(&[col("partition").eq(lit(2i32))]).partition,
            Ranges::between(2, 2)
        );
    }

    #[test]
    fn timestamps_round_outwards() {
        let ns = |v: i64| {
            lit(ScalarValue::TimestampNanosecond(
                Some(v),
                Some("UTC".into()),
            ))
        };
        let at = |e: Expr| Pushdown::of(&[e]).timestamp;
        assert_eq!(
            at(col("timestamp").gt_eq(ns(1_500_000))),
            Ranges::between(1, i64::MAX)
        );
        assert_eq!(
            at(col("timestamp").gt(ns(2_000_000))),
            Ranges::between(3, i64::MAX)
        );
        assert_eq!(
            at(col("timestamp").lt(ns(2_500_000))),
            Ranges::between(i64::MIN, 3)
        );
        let ms = lit(ScalarValue::TimestampMillisecond(Some(7), None));
        assert_eq!(at(col("timestamp").eq(ms)), Ranges::between(7, 7));
    }
}
