//! What every store shares: the page of a list and its bounded count, case-folded `LIKE`
//! patterns and optional filters.

/// A page of a list, newest first: skip `offset` rows or start after the row `after_id`.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub after_id: Option<String>,
    pub offset: i64,
    pub limit: i64,
}

/// `x` as `LIKE` compares it ignoring case, for a [`like_pattern`]: `lower(x)` on PostgreSQL,
/// whose `LIKE` is case-sensitive; `x` itself on SQLite, whose `LIKE` already ignores ASCII
/// case and whose `lower()` folds nothing more, so both match the same rows there without a
/// call and a copy of every value the filter reads.
pub fn folded<X>(x: X) -> Folded<X> {
    Folded(x)
}

/// See [`folded`].
#[derive(Debug, Clone, Copy, diesel::query_builder::QueryId, diesel::expression::ValidGrouping)]
pub struct Folded<X>(X);

impl<X: diesel::Expression> diesel::Expression for Folded<X> {
    type SqlType = X::SqlType;
}

impl<X, QS> diesel::AppearsOnTable<QS> for Folded<X>
where
    X: diesel::AppearsOnTable<QS>,
    Self: diesel::Expression,
{
}

impl<X, QS> diesel::SelectableExpression<QS> for Folded<X>
where
    X: diesel::SelectableExpression<QS>,
    Self: diesel::AppearsOnTable<QS>,
{
}

impl<X> diesel::query_builder::QueryFragment<super::MultiBackend> for Folded<X>
where
    X: diesel::query_builder::QueryFragment<super::MultiBackend>,
{
    fn walk_ast<'b>(
        &'b self, mut out: diesel::query_builder::AstPass<'_, 'b, super::MultiBackend>,
    ) -> diesel::QueryResult<()> {
        if matches!(out.backend(), super::MultiBackend::Sqlite(_)) {
            return self.0.walk_ast(out);
        }
        out.push_sql("lower(");
        self.0.walk_ast(out.reborrow())?;
        out.push_sql(")");
        Ok(())
    }
}

/// A `LIKE '%…%'` pattern (escape `\`) matching `needle` lower-cased, anywhere.
pub fn like_pattern(needle: &str) -> String {
    let mut out = String::with_capacity(needle.len() + 2);
    out.push('%');
    for c in needle.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// Narrows a query by a filter when there is one: what an optional list parameter (`?type=`,
/// `?status=`) does to a boxed list query.
pub trait FilterIf: Sized {
    /// `self`, filtered by `predicate` when it is `Some`.
    fn filter_if<P>(self, predicate: Option<P>) -> Self
    where
        Self: diesel::query_dsl::methods::FilterDsl<P, Output = Self>;
}

impl<Q> FilterIf for Q {
    fn filter_if<P>(self, predicate: Option<P>) -> Self
    where
        Self: diesel::query_dsl::methods::FilterDsl<P, Output = Self>,
    {
        match predicate {
            Some(p) => diesel::query_dsl::methods::FilterDsl::filter(self, p),
            None => self,
        }
    }
}

/// At most how many matching rows a list counts for its `total` (as GitHub search stops at
/// 1,000 results; Elasticsearch counts to 10,000 by default): counting is the part of a list
/// page that grows with the organization, and beyond this a page costs the same in a large
/// organization as in a small one.
pub const COUNT_UP_TO: i64 = 1_000;

impl Page {
    /// How far a list counts its matching rows for this page ([`count_limit`]).
    pub fn count_limit(&self) -> i64 {
        count_limit(self.offset, self.limit)
    }

    /// The number of matching rows when this page of `len` rows already tells it, so that no
    /// count need run: a page by offset that is shorter than its limit is the end of the list
    /// (unless it is empty past the first page, when the list may end anywhere before it). A
    /// page after a cursor does not tell: the cursor's offset is where the list stood when it
    /// was handed out.
    pub fn total_shown(&self, len: usize) -> Option<i64> {
        let len = i64::try_from(len).ok()?;
        let short = len < self.limit && (len > 0 || self.offset == 0);
        (self.after_id.is_none() && short).then(|| self.offset.saturating_add(len))
    }

    /// How many rows match: [`Page::total_shown`] by this page of `len` rows, else `count()`.
    pub fn total<E>(&self, len: usize, count: impl FnOnce() -> Result<i64, E>) -> Result<i64, E> {
        match self.total_shown(len) {
            Some(total) => Ok(total),
            None => count(),
        }
    }
}

/// How far a list counts its matching rows for the page at `offset`: [`COUNT_UP_TO`], or one
/// past the page's end when it lies beyond, so that `total > end` still tells of a next page.
pub fn count_limit(offset: i64, limit: i64) -> i64 {
    COUNT_UP_TO.max(offset.saturating_add(limit).saturating_add(1))
}

/// `SELECT COUNT(*) FROM (<query>) AS counted`: the rows of a query that carries its own
/// `LIMIT` ([`Page::count_limit`]), counted by the database without loading them.
#[derive(Debug, Clone, Copy, diesel::query_builder::QueryId)]
pub struct CountOf<Q>(pub Q);

impl<Q> diesel::query_builder::Query for CountOf<Q> {
    type SqlType = diesel::sql_types::BigInt;
}

impl<Q, Conn> diesel::RunQueryDsl<Conn> for CountOf<Q> {}

impl<Q> diesel::query_builder::QueryFragment<super::MultiBackend> for CountOf<Q>
where
    Q: diesel::query_builder::QueryFragment<super::MultiBackend>,
{
    fn walk_ast<'b>(
        &'b self, mut out: diesel::query_builder::AstPass<'_, 'b, super::MultiBackend>,
    ) -> diesel::QueryResult<()> {
        out.push_sql("SELECT COUNT(*) FROM (");
        self.0.walk_ast(out.reborrow())?;
        out.push_sql(") AS counted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Page;

    fn page(offset: i64, limit: i64, after_id: Option<&str>) -> Page {
        Page {
            after_id: after_id.map(str::to_string),
            offset,
            limit,
        }
    }

    #[test]
    fn a_short_page_by_offset_tells_the_total() {
        assert_eq!(page(0, 20, None).total_shown(0), Some(0));
        assert_eq!(page(0, 20, None).total_shown(7), Some(7));
        assert_eq!(page(40, 20, None).total_shown(3), Some(43));
        // A full page, an empty page past the first, a page after a cursor: count.
        assert_eq!(page(0, 20, None).total_shown(20), None);
        assert_eq!(page(40, 20, None).total_shown(0), None);
        assert_eq!(page(40, 20, Some("agent_x")).total_shown(3), None);
        let counted = page(0, 20, None).total(20, || Ok::<_, ()>(1_000));
        assert_eq!(counted, Ok(1_000));
        let shown = page(0, 20, None).total(5, || Err(()));
        assert_eq!(shown, Ok(5));
    }
}
