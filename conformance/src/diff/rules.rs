//! The catalog of change rules: every change `agentplane diff` reports names one of these.
//!
//! An id never changes meaning once published (CI configurations match on them), and each
//! has one fixed severity. Names follow oasdiff's where oasdiff has the same rule
//! (`api-removed`, `request-parameter-became-required`, `new-required-request-property`,
//! `response-media-type-removed`, …), so people moving from it recognise them. Rules about a
//! schema carry the side they apply to (`request-…` or `response-…`), because the same edit
//! is breaking on one side and safe on the other: a client *sends* request schemas (the server
//! narrowing what it accepts breaks it) and *reads* response schemas (the server widening what
//! it may send breaks it). In the schema rules, "property" means any position below a body or
//! parameter, the body or parameter schema itself included.

use std::fmt;

/// How a change affects clients written against the old document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// A client that worked against the old document fails against the new one.
    Breaking,
    /// Some clients may fail (ones that validate strictly, or generated ones), or the change
    /// breaks only when a policy the document cannot state is assumed.
    Potential,
    /// No client written against the old document can notice, or it only gains.
    Safe,
}

impl Severity {
    /// Every severity, worst first.
    pub const ALL: [Severity; 3] = [Severity::Breaking, Severity::Potential, Severity::Safe];

    /// The name used in JSON output and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Breaking => "breaking",
            Severity::Potential => "potentially-breaking",
            Severity::Safe => "safe",
        }
    }

    /// A heading for reports ("Breaking", "Potentially breaking", "Safe").
    pub fn title(self) -> &'static str {
        match self {
            Severity::Breaking => "Breaking",
            Severity::Potential => "Potentially breaking",
            Severity::Safe => "Safe",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule: a stable id, its severity and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub id: &'static str,
    pub severity: Severity,
    /// One line for `--help`-style listings and the docs.
    pub doc: &'static str,
}

macro_rules! rules {
    ($($name:ident = $id:literal, $severity:ident, $doc:literal;)*) => {
        $(
            #[doc = $doc]
            pub const $name: Rule = Rule { id: $id, severity: Severity::$severity, doc: $doc };
        )*
        /// Every rule, in catalog order.
        pub const ALL: &[Rule] = &[$($name),*];
    };
}

rules! {
    // ---- paths and operations ----------------------------------------------------------
    API_PATH_REMOVED = "api-path-removed", Breaking, "a path and all its operations were removed";
    API_PATH_ADDED = "api-path-added", Safe, "a new path was added";
    API_REMOVED = "api-removed", Breaking, "an operation was removed";
    API_ADDED = "api-added", Safe, "an operation was added to an existing path";
    API_REMOVED_AFTER_DEPRECATION = "api-removed-after-deprecation", Potential,
        "an operation (or a path) that was deprecated was removed";
    API_DEPRECATED = "api-deprecated", Safe, "an operation was marked deprecated";
    API_REACTIVATED = "api-reactivated", Safe, "an operation is no longer deprecated";
    API_OPERATION_ID_CHANGED = "api-operation-id-changed", Potential,
        "an operationId changed (generated clients rename the method)";
    // ---- security ------------------------------------------------------------------------
    SECURITY_REQUIREMENT_ADDED = "security-requirement-added", Breaking,
        "credentials that were enough for an operation no longer are";
    SECURITY_REQUIREMENT_REMOVED = "security-requirement-removed", Safe,
        "an operation needs fewer credentials (or none)";
    SECURITY_ALTERNATIVE_ADDED = "security-alternative-added", Safe,
        "an operation accepts another kind of credentials";
    // ---- parameters ----------------------------------------------------------------------
    NEW_REQUIRED_REQUEST_PARAMETER = "new-required-request-parameter", Breaking,
        "a required parameter was added";
    NEW_OPTIONAL_REQUEST_PARAMETER = "new-optional-request-parameter", Safe,
        "an optional parameter was added";
    REQUEST_PARAMETER_REMOVED = "request-parameter-removed", Potential,
        "a parameter was removed (clients still sending it may be rejected or ignored)";
    REQUEST_PARAMETER_BECAME_REQUIRED = "request-parameter-became-required", Breaking,
        "an optional parameter became required";
    REQUEST_PARAMETER_BECAME_OPTIONAL = "request-parameter-became-optional", Safe,
        "a required parameter became optional";
    // ---- request bodies ------------------------------------------------------------------
    REQUEST_BODY_ADDED_REQUIRED = "request-body-added-required", Breaking,
        "a required request body was added";
    REQUEST_BODY_ADDED_OPTIONAL = "request-body-added-optional", Safe,
        "an optional request body was added";
    REQUEST_BODY_REMOVED = "request-body-removed", Breaking, "the request body was removed";
    REQUEST_BODY_BECAME_REQUIRED = "request-body-became-required", Breaking,
        "an optional request body became required";
    REQUEST_BODY_BECAME_OPTIONAL = "request-body-became-optional", Safe,
        "a required request body became optional";
    REQUEST_MEDIA_TYPE_REMOVED = "request-media-type-removed", Breaking,
        "a request body media type is no longer accepted";
    REQUEST_MEDIA_TYPE_ADDED = "request-media-type-added", Safe,
        "a request body media type was added";
    // ---- responses -----------------------------------------------------------------------
    RESPONSE_STATUS_REMOVED = "response-status-removed", Breaking,
        "a success (1xx-3xx) response status was removed";
    RESPONSE_STATUS_ADDED = "response-status-added", Potential,
        "a success response status was added (clients may not handle it)";
    RESPONSE_ERROR_STATUS_REMOVED = "response-error-status-removed", Potential,
        "an error (4xx, 5xx or default) response was removed (generated clients lose a variant)";
    RESPONSE_ERROR_STATUS_ADDED = "response-error-status-added", Safe,
        "an error response was documented";
    RESPONSE_MEDIA_TYPE_REMOVED = "response-media-type-removed", Breaking,
        "a response media type was removed";
    RESPONSE_MEDIA_TYPE_ADDED = "response-media-type-added", Safe,
        "a response media type was added";
    RESPONSE_REQUIRED_HEADER_REMOVED = "response-required-header-removed", Breaking,
        "a required response header was removed";
    RESPONSE_OPTIONAL_HEADER_REMOVED = "response-optional-header-removed", Potential,
        "an optional response header was removed";
    RESPONSE_HEADER_ADDED = "response-header-added", Safe, "a response header was added";
    RESPONSE_HEADER_BECAME_OPTIONAL = "response-header-became-optional", Breaking,
        "a required response header became optional";
    RESPONSE_HEADER_BECAME_REQUIRED = "response-header-became-required", Safe,
        "an optional response header became required";
    // ---- request object properties -------------------------------------------------------
    NEW_REQUIRED_REQUEST_PROPERTY = "new-required-request-property", Breaking,
        "a required request property was added";
    NEW_OPTIONAL_REQUEST_PROPERTY = "new-optional-request-property", Safe,
        "an optional request property was added";
    REQUEST_PROPERTY_REMOVED = "request-property-removed", Potential,
        "a request property was removed from an object that allows other properties";
    REQUEST_PROPERTY_REMOVED_FROM_CLOSED_OBJECT = "request-property-removed-from-closed-object",
        Breaking,
        "a request property was removed from an object that forbids unknown properties";
    REQUEST_PROPERTY_BECAME_REQUIRED = "request-property-became-required", Breaking,
        "an optional request property became required";
    REQUEST_PROPERTY_BECAME_OPTIONAL = "request-property-became-optional", Safe,
        "a required request property became optional";
    REQUEST_ADDITIONAL_PROPERTIES_FORBIDDEN = "request-additional-properties-forbidden",
        Breaking, "a request object no longer accepts unknown properties";
    REQUEST_ADDITIONAL_PROPERTIES_ALLOWED = "request-additional-properties-allowed", Safe,
        "a request object now accepts unknown properties";
    // ---- response object properties ------------------------------------------------------
    RESPONSE_PROPERTY_REMOVED = "response-property-removed", Breaking,
        "a response property was removed";
    RESPONSE_PROPERTY_ADDED = "response-property-added", Safe, "a response property was added";
    RESPONSE_PROPERTY_BECAME_OPTIONAL = "response-property-became-optional", Breaking,
        "a required response property became optional";
    RESPONSE_PROPERTY_BECAME_REQUIRED = "response-property-became-required", Safe,
        "an optional response property became required";
    // ---- nullability and types -------------------------------------------------------------
    REQUEST_PROPERTY_BECAME_NULLABLE = "request-property-became-nullable", Safe,
        "a request value may now be null";
    REQUEST_PROPERTY_BECAME_NOT_NULLABLE = "request-property-became-not-nullable", Breaking,
        "a request value may no longer be null";
    RESPONSE_PROPERTY_BECAME_NULLABLE = "response-property-became-nullable", Breaking,
        "a response value may now be null";
    RESPONSE_PROPERTY_BECAME_NOT_NULLABLE = "response-property-became-not-nullable", Safe,
        "a response value is no longer null";
    REQUEST_PROPERTY_TYPE_NARROWED = "request-property-type-narrowed", Breaking,
        "a request value accepts fewer types";
    REQUEST_PROPERTY_TYPE_WIDENED = "request-property-type-widened", Safe,
        "a request value accepts more types";
    REQUEST_PROPERTY_TYPE_CHANGED = "request-property-type-changed", Breaking,
        "a request value's type changed to an unrelated one";
    RESPONSE_PROPERTY_TYPE_NARROWED = "response-property-type-narrowed", Safe,
        "a response value has fewer possible types";
    RESPONSE_PROPERTY_TYPE_WIDENED = "response-property-type-widened", Breaking,
        "a response value may have more types";
    RESPONSE_PROPERTY_TYPE_CHANGED = "response-property-type-changed", Breaking,
        "a response value's type changed to an unrelated one";
    REQUEST_FORMAT_NARROWED = "request-format-narrowed", Breaking,
        "a request value gained a format, or a narrower one (int64 to int32)";
    REQUEST_FORMAT_WIDENED = "request-format-widened", Safe,
        "a request value lost its format, or got a wider one";
    REQUEST_FORMAT_CHANGED = "request-format-changed", Breaking,
        "a request value's format changed to an unrelated one";
    RESPONSE_FORMAT_NARROWED = "response-format-narrowed", Safe,
        "a response value gained a format, or a narrower one";
    RESPONSE_FORMAT_WIDENED = "response-format-widened", Breaking,
        "a response value lost its format, or got a wider one (int32 to int64)";
    RESPONSE_FORMAT_CHANGED = "response-format-changed", Breaking,
        "a response value's format changed to an unrelated one";
    // ---- enums (and 3.1 const, a one-value enum) -------------------------------------------
    REQUEST_ENUM_VALUE_REMOVED = "request-enum-value-removed", Breaking,
        "a request enum no longer accepts a value";
    REQUEST_ENUM_VALUE_ADDED = "request-enum-value-added", Safe,
        "a request enum accepts a new value";
    REQUEST_BECAME_ENUM = "request-became-enum", Breaking,
        "a request value was restricted to a list of values";
    REQUEST_NO_LONGER_ENUM = "request-no-longer-enum", Safe,
        "a request value is no longer restricted to a list";
    RESPONSE_ENUM_VALUE_ADDED = "response-enum-value-added", Breaking,
        "a response enum may carry a new value (exhaustive clients fail on it)";
    RESPONSE_ENUM_VALUE_REMOVED = "response-enum-value-removed", Safe,
        "a response enum no longer carries a value";
    RESPONSE_BECAME_ENUM = "response-became-enum", Safe,
        "a response value was restricted to a list of values";
    RESPONSE_NO_LONGER_ENUM = "response-no-longer-enum", Breaking,
        "a response value is no longer restricted to a list";
    // ---- patterns --------------------------------------------------------------------------
    REQUEST_PATTERN_ADDED = "request-pattern-added", Breaking,
        "a request string must now match a pattern";
    REQUEST_PATTERN_CHANGED = "request-pattern-changed", Potential,
        "a request string's pattern changed (it may reject values it accepted)";
    REQUEST_PATTERN_REMOVED = "request-pattern-removed", Safe,
        "a request string no longer has a pattern";
    RESPONSE_PATTERN_ADDED = "response-pattern-added", Safe,
        "a response string now matches a pattern";
    RESPONSE_PATTERN_CHANGED = "response-pattern-changed", Potential,
        "a response string's pattern changed";
    RESPONSE_PATTERN_REMOVED = "response-pattern-removed", Potential,
        "a response string no longer promises a pattern";
    // ---- bounds (maximum/exclusiveMaximum and minimum/exclusiveMinimum are one bound each) --
    REQUEST_MAXIMUM_DECREASED = "request-maximum-decreased", Breaking,
        "a request number's maximum was lowered (or set)";
    REQUEST_MAXIMUM_INCREASED = "request-maximum-increased", Safe,
        "a request number's maximum was raised (or removed)";
    REQUEST_MINIMUM_INCREASED = "request-minimum-increased", Breaking,
        "a request number's minimum was raised (or set)";
    REQUEST_MINIMUM_DECREASED = "request-minimum-decreased", Safe,
        "a request number's minimum was lowered (or removed)";
    REQUEST_MAX_LENGTH_DECREASED = "request-max-length-decreased", Breaking,
        "a request string's maxLength was lowered (or set)";
    REQUEST_MAX_LENGTH_INCREASED = "request-max-length-increased", Safe,
        "a request string's maxLength was raised (or removed)";
    REQUEST_MIN_LENGTH_INCREASED = "request-min-length-increased", Breaking,
        "a request string's minLength was raised (or set)";
    REQUEST_MIN_LENGTH_DECREASED = "request-min-length-decreased", Safe,
        "a request string's minLength was lowered (or removed)";
    REQUEST_MAX_ITEMS_DECREASED = "request-max-items-decreased", Breaking,
        "a request array's maxItems was lowered (or set)";
    REQUEST_MAX_ITEMS_INCREASED = "request-max-items-increased", Safe,
        "a request array's maxItems was raised (or removed)";
    REQUEST_MIN_ITEMS_INCREASED = "request-min-items-increased", Breaking,
        "a request array's minItems was raised (or set)";
    REQUEST_MIN_ITEMS_DECREASED = "request-min-items-decreased", Safe,
        "a request array's minItems was lowered (or removed)";
    RESPONSE_MAXIMUM_INCREASED = "response-maximum-increased", Potential,
        "a response number's maximum was raised (or removed)";
    RESPONSE_MAXIMUM_DECREASED = "response-maximum-decreased", Safe,
        "a response number's maximum was lowered (or set)";
    RESPONSE_MINIMUM_DECREASED = "response-minimum-decreased", Potential,
        "a response number's minimum was lowered (or removed)";
    RESPONSE_MINIMUM_INCREASED = "response-minimum-increased", Safe,
        "a response number's minimum was raised (or set)";
    RESPONSE_MAX_LENGTH_INCREASED = "response-max-length-increased", Potential,
        "a response string's maxLength was raised (or removed)";
    RESPONSE_MAX_LENGTH_DECREASED = "response-max-length-decreased", Safe,
        "a response string's maxLength was lowered (or set)";
    RESPONSE_MIN_LENGTH_DECREASED = "response-min-length-decreased", Potential,
        "a response string's minLength was lowered (or removed)";
    RESPONSE_MIN_LENGTH_INCREASED = "response-min-length-increased", Safe,
        "a response string's minLength was raised (or set)";
    RESPONSE_MAX_ITEMS_INCREASED = "response-max-items-increased", Potential,
        "a response array's maxItems was raised (or removed)";
    RESPONSE_MAX_ITEMS_DECREASED = "response-max-items-decreased", Safe,
        "a response array's maxItems was lowered (or set)";
    RESPONSE_MIN_ITEMS_DECREASED = "response-min-items-decreased", Potential,
        "a response array's minItems was lowered (or removed)";
    RESPONSE_MIN_ITEMS_INCREASED = "response-min-items-increased", Safe,
        "a response array's minItems was raised (or set)";
    // ---- oneOf / anyOf branches (allOf is merged into the schema it composes) ----------------
    REQUEST_ONE_OF_BRANCH_REMOVED = "request-one-of-branch-removed", Breaking,
        "a request oneOf lost a branch (3.1 `oneOf`, or 3.0)";
    REQUEST_ONE_OF_BRANCH_ADDED = "request-one-of-branch-added", Safe,
        "a request oneOf gained a branch";
    RESPONSE_ONE_OF_BRANCH_REMOVED = "response-one-of-branch-removed", Safe,
        "a response oneOf lost a branch";
    RESPONSE_ONE_OF_BRANCH_ADDED = "response-one-of-branch-added", Breaking,
        "a response oneOf gained a branch (clients may not handle the new shape)";
    REQUEST_ANY_OF_BRANCH_REMOVED = "request-any-of-branch-removed", Breaking,
        "a request anyOf lost a branch";
    REQUEST_ANY_OF_BRANCH_ADDED = "request-any-of-branch-added", Safe,
        "a request anyOf gained a branch";
    RESPONSE_ANY_OF_BRANCH_REMOVED = "response-any-of-branch-removed", Safe,
        "a response anyOf lost a branch";
    RESPONSE_ANY_OF_BRANCH_ADDED = "response-any-of-branch-added", Breaking,
        "a response anyOf gained a branch";
}

/// The rule with this id.
pub fn find(id: &str) -> Option<&'static Rule> {
    ALL.iter().find(|r| r.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_kebab_case() {
        let mut seen = std::collections::BTreeSet::new();
        for rule in ALL {
            assert!(seen.insert(rule.id), "{} twice", rule.id);
            assert!(
                rule.id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{}",
                rule.id
            );
        }
    }
}
