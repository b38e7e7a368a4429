//! What every store shares: the page of a list, `lower()`, `LIKE` patterns and optional filters.

/// A page of a list, newest first: skip `offset` rows or start after the row `after_id`.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub after_id: Option<String>,
    pub offset: i64,
    pub limit: i64,
}

diesel::define_sql_function! {
    /// SQL `lower()`.
    fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

diesel::define_sql_function! {
    /// SQL `lower()` of a nullable column.
    #[sql_name = "lower"]
    fn lower_nullable(x: diesel::sql_types::Nullable<diesel::sql_types::Text>) -> diesel::sql_types::Nullable<diesel::sql_types::Text>;
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
