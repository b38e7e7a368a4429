//! Typed columns: what a `TEXT` or `BIGINT` column holds, as the Rust type it means, read and
//! written the same way on both backends (and so through [`super::MultiBackend`]).
//!
//! - [`text_enum!`](crate::db::types::text_enum): an enum stored as its wire text, with
//!   `as_str`, `FromStr`, `Display`, serde and diesel `Text` mappings, so a status is matched
//!   as a variant instead of compared as a string.
//! - [`Flag`]: a boolean stored as the integer 0 or 1 (the schema keeps to `TEXT` and `BIGINT`,
//!   which both engines share); rows declare the field `bool` with
//!   `#[diesel(serialize_as = Flag, deserialize_as = Flag)]`.
//! - [`Json`]: a serde value stored as its JSON text. Serializing is `serde_json::to_string`
//!   (keys in declaration order), so a typed document writes the bytes the untyped `json!`
//!   it replaces wrote, and rows already stored read back.

use std::io::Write as _;

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql};
use diesel::pg::Pg;
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::{BigInt, Text};
use diesel::sqlite::Sqlite;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::MultiBackend;

/// A stored text that names no variant of the enum it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a {what}")]
pub struct UnknownVariant {
    /// The enum's name.
    pub what: &'static str,
    /// The text found.
    pub value: String,
}

/// Declares an enum stored (and sent) as text: each variant with its wire text.
///
/// ```ignore
/// text_enum! {
///     /// Where a sync is.
///     pub enum SyncStatus {
///         Queued = "queued",
///         Running = "running",
///     }
/// }
/// ```
///
/// gives `SyncStatus::ALL`, `as_str`, `FromStr` (an [`UnknownVariant`] error), `Display`,
/// `Serialize`/`Deserialize` as the text, and diesel `ToSql`/`FromSql` for `Text` on every
/// backend, so the enum can be a row's field and a query's operand.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, diesel::expression::AsExpression, diesel::deserialize::FromSqlRow,
        )]
        #[diesel(sql_type = diesel::sql_types::Text)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text stored and sent for this variant.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text ),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::db::types::UnknownVariant;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    other => Err($crate::db::types::UnknownVariant {
                        what: stringify!($name),
                        value: other.to_string(),
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl<DB> diesel::serialize::ToSql<diesel::sql_types::Text, DB> for $name
        where
            DB: diesel::backend::Backend,
            str: diesel::serialize::ToSql<diesel::sql_types::Text, DB>,
        {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, DB>,
            ) -> diesel::serialize::Result {
                self.as_str().to_sql(out)
            }
        }

        impl<DB> diesel::deserialize::FromSql<diesel::sql_types::Text, DB> for $name
        where
            DB: diesel::backend::Backend,
            String: diesel::deserialize::FromSql<diesel::sql_types::Text, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> diesel::deserialize::Result<Self> {
                let text = <String as diesel::deserialize::FromSql<
                    diesel::sql_types::Text,
                    DB,
                >>::from_sql(bytes)?;
                Ok(text.parse()?)
            }
        }
    };
}

pub(crate) use text_enum;

/// `From` both ways between two enums with the same variants: a storage enum and the
/// generated API enum it stands for (the API layer declares these; storage knows nothing of
/// the API). The matches are exhaustive, so a variant added on one side only fails to build.
///
/// ```ignore
/// same_variants!(SyncStatus <=> models::SyncStatus { Queued, Running, Succeeded, Failed });
/// ```
macro_rules! same_variants {
    ($($a:ident)::+ <=> $($b:ident)::+ { $($variant:ident),+ $(,)? }) => {
        impl From<$($a)::+> for $($b)::+ {
            fn from(value: $($a)::+) -> Self {
                type Source = $($a)::+;
                match value {
                    $( Source::$variant => Self::$variant, )+
                }
            }
        }

        impl From<$($b)::+> for $($a)::+ {
            fn from(value: $($b)::+) -> Self {
                type Source = $($b)::+;
                match value {
                    $( Source::$variant => Self::$variant, )+
                }
            }
        }
    };
}

pub(crate) use same_variants;

/// A boolean stored as the integer 0 (false) or 1 (true); anything but 0 reads as true.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    diesel::expression::AsExpression,
    diesel::deserialize::FromSqlRow,
)]
#[diesel(sql_type = BigInt)]
pub struct Flag(pub bool);

impl From<bool> for Flag {
    fn from(b: bool) -> Self {
        Flag(b)
    }
}

impl From<Flag> for bool {
    fn from(f: Flag) -> Self {
        f.0
    }
}

impl<DB> ToSql<BigInt, DB> for Flag
where
    DB: Backend,
    i64: ToSql<BigInt, DB>,
{
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
        let stored: &'static i64 = if self.0 { &1 } else { &0 };
        stored.to_sql(out)
    }
}

impl<DB> FromSql<BigInt, DB> for Flag
where
    DB: Backend,
    i64: FromSql<BigInt, DB>,
{
    fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
        Ok(Flag(i64::from_sql(bytes)? != 0))
    }
}

/// A value stored as its JSON text.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Default,
    diesel::expression::AsExpression,
    diesel::deserialize::FromSqlRow,
    Serialize,
)]
#[diesel(sql_type = Text)]
#[serde(transparent)]
pub struct Json<T>(pub T);

impl<T> std::ops::Deref for Json<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: Serialize> Json<T> {
    /// The JSON text stored.
    pub fn to_text(&self) -> serde_json::Result<String> {
        serde_json::to_string(&self.0)
    }
}

impl<T, DB> FromSql<Text, DB> for Json<T>
where
    T: DeserializeOwned,
    DB: Backend,
    String: FromSql<Text, DB>,
{
    fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
        let text = String::from_sql(bytes)?;
        Ok(Json(serde_json::from_str(&text)?))
    }
}

impl<T: Serialize + std::fmt::Debug> ToSql<Text, Sqlite> for Json<T> {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(self.to_text()?);
        Ok(IsNull::No)
    }
}

impl<T: Serialize + std::fmt::Debug> ToSql<Text, Pg> for Json<T> {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(self.to_text()?.as_bytes())?;
        Ok(IsNull::No)
    }
}

impl<T> ToSql<Text, MultiBackend> for Json<T>
where
    T: Serialize + std::fmt::Debug + Send + Sync + 'static,
{
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, MultiBackend>) -> serialize::Result {
        out.set_value((Text, self));
        Ok(IsNull::No)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    text_enum! {
        /// A test enum.
        enum Colour {
            Red = "red",
            DarkBlue = "dark_blue",
        }
    }

    #[test]
    fn text_enums_round_trip_through_their_text_and_serde() {
        for c in Colour::ALL {
            assert_eq!(c.as_str().parse::<Colour>(), Ok(*c));
        }
        assert_eq!(Colour::DarkBlue.to_string(), "dark_blue");
        assert_eq!(
            "green".parse::<Colour>(),
            Err(UnknownVariant {
                what: "Colour",
                value: "green".into()
            })
        );
        assert_eq!(
            serde_json::to_string(&Colour::DarkBlue).ok().as_deref(),
            Some("\"dark_blue\"")
        );
        assert!(serde_json::from_str::<Colour>("\"green\"").is_err());
    }

    #[test]
    fn json_columns_write_what_serde_json_writes() {
        let doc = Json(serde_json::json!({"b": 1, "a": [true, null]}));
        assert_eq!(
            doc.to_text().ok().as_deref(),
            Some(r#"{"b":1,"a":[true,null]}"#)
        );
    }
}
