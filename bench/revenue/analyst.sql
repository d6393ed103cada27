-- The baseline: the same metrics as an analyst would write them over the same history, in
-- plain SQL (a customer x month grid, MRR at each month start, LAG for the movements).
create function bench_revenue.analyst_movements(from_at timestamptz, months integer)
returns table (bucket_start timestamptz, start_mrr bigint, new_mrr bigint, expansion_mrr bigint,
               contraction_mrr bigint, churned_mrr bigint, reactivation_mrr bigint, end_mrr bigint)
language sql stable as $$
with month_starts as (
    select from_at + make_interval(months => k) as m from generate_series(0, months) k),
mrr as (
    select ms.m, h.customer_id,
           round(sum(h.price_cents * h.quantity
                     * case h.billing_interval when 'year' then 1 / 12.0 else 1 end
                     * (1 - coalesce(d.percent_off, 0) / 100))) as mrr
      from month_starts ms
      join entitlements.subscription_history h
        on h.valid_from <= ms.m and (h.valid_to is null or h.valid_to > ms.m)
      left join entitlements.discounts d
        on d.subscription_id = h.subscription_id and d.starts_at <= ms.m and (d.ends_at is null or d.ends_at > ms.m)
     where h.price_cents > 0
       and (h.status in ('active', 'past_due') or (h.status = 'canceled' and h.cancel_at_period_end))
       and (h.current_period_end is null or h.current_period_end > ms.m)
       and (h.ended_at is null or h.ended_at > ms.m)
     group by ms.m, h.customer_id),
first_paid as (
    select customer_id, min(valid_from) as at from entitlements.subscription_history
     where price_cents > 0 and status in ('active', 'past_due') group by customer_id),
grid as (
    select c.id as customer_id, ms.m, coalesce(mrr.mrr, 0) as mrr
      from entitlements.customers c
      cross join month_starts ms
      left join mrr on mrr.customer_id = c.id and mrr.m = ms.m),
moves as (
    select g.customer_id, g.m, lag(g.m) over w as prev_m, lag(g.mrr) over w as s, g.mrr as e
      from grid g window w as (partition by g.customer_id order by g.m))
select mv.prev_m,
       sum(mv.s)::bigint,
       coalesce(sum(mv.e) filter (where mv.s = 0 and mv.e > 0 and not coalesce(f.at < mv.prev_m, false)), 0)::bigint,
       coalesce(sum(mv.e - mv.s) filter (where mv.s > 0 and mv.e > mv.s), 0)::bigint,
       coalesce(sum(mv.s - mv.e) filter (where mv.e > 0 and mv.e < mv.s), 0)::bigint,
       coalesce(sum(mv.s) filter (where mv.s > 0 and mv.e = 0), 0)::bigint,
       coalesce(sum(mv.e) filter (where mv.s = 0 and mv.e > 0 and coalesce(f.at < mv.prev_m, false)), 0)::bigint,
       sum(mv.e)::bigint
  from moves mv
  left join first_paid f on f.customer_id = mv.customer_id
 where mv.prev_m is not null
 group by mv.prev_m
 order by mv.prev_m
$$;

create function bench_revenue.analyst_mrr(at timestamptz) returns bigint language sql stable as $$
    select coalesce(sum(mrr), 0)::bigint from (
        select round(sum(h.price_cents * h.quantity
                         * case h.billing_interval when 'year' then 1 / 12.0 else 1 end
                         * (1 - coalesce(d.percent_off, 0) / 100))) as mrr
          from entitlements.subscription_history h
          left join entitlements.discounts d
            on d.subscription_id = h.subscription_id and d.starts_at <= at and (d.ends_at is null or d.ends_at > at)
         where h.valid_from <= at and (h.valid_to is null or h.valid_to > at) and h.price_cents > 0
           and (h.status in ('active', 'past_due') or (h.status = 'canceled' and h.cancel_at_period_end))
           and (h.current_period_end is null or h.current_period_end > at)
           and (h.ended_at is null or h.ended_at > at)
         group by h.customer_id) x
$$;
