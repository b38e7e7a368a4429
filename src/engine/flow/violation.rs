//! What is wrong with a flow, field by field: what [`super::shape`] and [`super::validate`]
//! both report.

/// One thing wrong with a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field, as the API names it (`flow.edges[0].target`).
    pub field: String,
    /// What is wrong ([`code`]).
    pub code: &'static str,
    pub message: String,
}

impl Violation {
    pub fn new(field: &str, code: &'static str, message: impl Into<String>) -> Violation {
        Violation {
            field: field.to_string(),
            code,
            message: message.into(),
        }
    }
}

/// The codes of [`Violation`]s: JSON Schema keywords for the shape, then the graph's own.
pub mod code {
    pub const TYPE: &str = "type";
    pub const REQUIRED: &str = "required";
    pub const ADDITIONAL_PROPERTIES: &str = "additionalProperties";
    pub const ENUM: &str = "enum";
    pub const PATTERN: &str = "pattern";
    pub const MIN_LENGTH: &str = "minLength";
    pub const MAX_LENGTH: &str = "maxLength";
    pub const MINIMUM: &str = "minimum";
    pub const MAXIMUM: &str = "maximum";
    pub const MIN_ITEMS: &str = "minItems";
    pub const MAX_ITEMS: &str = "maxItems";
    pub const MAX_PROPERTIES: &str = "maxProperties";
    /// A condition's expression that JSONLogic does not accept.
    pub const EXPRESSION: &str = "expression";
    /// A node id used twice.
    pub const UNIQUE: &str = "unique";
    /// A node, tool, model or knowledge base that does not exist.
    pub const NOT_FOUND: &str = "not_found";
    /// A second `input` node, an edge into the input, or `entry` beside an `input` node.
    pub const ENTRY: &str = "entry";
    /// An edge that closes a cycle.
    pub const CYCLE: &str = "cycle";
    /// A `branch` on an edge that does not leave a `condition` node.
    pub const BRANCH: &str = "branch";
    /// A template naming a node that does not run before this one.
    pub const UPSTREAM: &str = "upstream";
}
