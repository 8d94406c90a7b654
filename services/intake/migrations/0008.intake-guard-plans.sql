-- depends: 0007.intake-submission-guard
-- Let Postgres reuse the plans of an intake submission instead of planning it afresh each
-- time, which cost more than the write itself (~0.5 ms of server CPU per submission).
--
-- ROWS 1: the guard returns exactly one row. Left at the default guess for a set-returning
-- function (1000), the reusable (generic) plan of write_intake's statement looked far dearer
-- than one planned for each call's values, so every call was planned anew.
--
-- plan_cache_mode: the guard's own reads are by key, so knowing the values (check_known
-- false, say) saves nothing worth a plan per call.
ALTER FUNCTION intake_submission_guard(uuid, bytea, uuid, boolean, bytea)
    ROWS 1
    SET plan_cache_mode = force_generic_plan;
