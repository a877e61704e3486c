//! Yield points above the operators that multiply rows, so a query can always be cancelled.
//!
//! DataFusion's own `EnsureCooperative` puts yield points at the leaves: a scan gives its task
//! back to the runtime every so many batches. A join (a cross join above all) can produce an
//! unbounded number of batches from one input batch without polling its inputs again, so the
//! task would never yield: the abort of `strata.sql.timeout.ms` only takes effect at a yield
//! point, and on a runtime of one thread the timer itself would never be polled. This rule wraps
//! each such operator in DataFusion's `CooperativeExec`, which spends one unit of the task's
//! budget per batch it passes on (nothing else changes: same batches, same order).

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::ExecutionPlan;

#[derive(Debug, Default)]
pub struct YieldAboveJoins;

/// An operator that may emit many batches per batch it reads.
fn multiplies_rows(plan: &dyn ExecutionPlan) -> bool {
    let name = plan.name();
    name.contains("Join") || name == "UnnestExec"
}

impl PhysicalOptimizerRule for YieldAboveJoins {
    fn name(&self) -> &str {
        "strata::YieldAboveJoins"
    }

    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if multiplies_rows(node.as_ref()) {
                Ok(Transformed::yes(Arc::new(CooperativeExec::new(node)) as _))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .map(|t| t.data)
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    #[tokio::test]
    async fn a_cross_join_is_wrapped_and_its_answer_unchanged() {
        let ctx = SessionContext::new();
        // Not count(*): exact statistics would answer that without running the join.
        let sql = "SELECT sum(a.x * b.y) AS s FROM (VALUES (1), (2), (3)) a(x) CROSS JOIN (VALUES (1), (2)) b(y)";
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let wrapped = YieldAboveJoins
            .optimize(plan, &ConfigOptions::default())
            .unwrap();
        let shown = datafusion::physical_plan::displayable(wrapped.as_ref())
            .indent(false)
            .to_string();
        let coop = shown.find("CooperativeExec").expect("wrapped");
        assert!(shown[coop..].contains("CrossJoinExec"), "{shown}");
        let task = ctx.task_ctx();
        let batches = datafusion::physical_plan::collect(wrapped, task)
            .await
            .unwrap();
        let n = batches[0].column(0).as_any();
        let n = n
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap();
        assert_eq!(n.value(0), 18);
    }
}
