//! Server-side validation in AWS's words: every constraint the API model declares for the
//! members the emulator accepts (required, length, pattern, range), reported as one
//! ValidationException listing each violation, as SageMaker does:
//! `1 validation error detected: Value 'x' at 'pipelineExecutionArn' failed to satisfy
//! constraint: Member must satisfy regular expression pattern: ...`.

use std::sync::OnceLock;

use regex::Regex;

use super::error::AwsError;

/// A constraint pattern from SageMaker's API model, compiled on first use. The model's
/// patterns are unanchored; AWS matches them against the whole value.
pub(crate) struct Pattern {
    source: &'static str,
    compiled: OnceLock<Result<Regex, regex::Error>>,
}

impl Pattern {
    const fn new(source: &'static str) -> Self {
        Self {
            source,
            compiled: OnceLock::new(),
        }
    }

    /// Whether all of `value` matches. `Err` if the pattern does not compile: a bug in the
    /// constants below, which `every_pattern_compiles` catches and a caller would see as an
    /// internal error, never as a panic or as a complaint about their input.
    fn matches(&self, value: &str) -> Result<bool, &regex::Error> {
        self.compiled
            .get_or_init(|| Regex::new(&format!("^(?:{})$", self.source)))
            .as_ref()
            .map(|re| re.is_match(value))
    }
}

/// Declares each pattern and, for the tests, the list of them all, so that none is missed.
macro_rules! patterns {
    ($($name:ident = $source:literal;)*) => {
        $(pub(crate) static $name: Pattern = Pattern::new($source);)*

        #[cfg(test)]
        pub(crate) static ALL: &[&Pattern] = &[$(&$name),*];
    };
}

/// Patterns from SageMaker's API model (and STS's).
pub(crate) mod patterns {
    use super::Pattern;

    patterns! {
        PIPELINE_EXECUTION_ARN =
            r"arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]*:[0-9]{12}:pipeline\/.*\/execution\/.*";
        PIPELINE_NAME = r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,255}";
        PIPELINE_NAME_OR_ARN = r"(arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]*:([0-9]{12}|aws):pipeline/.*)?([a-zA-Z0-9](-*[a-zA-Z0-9]){0,255})";
        PIPELINE_ARN = r"arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]*:([0-9]{12}|aws):pipeline/.*";
        PIPELINE_EXECUTION_NAME = r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,81}";
        PIPELINE_PARAMETER_NAME = r"[A-Za-z0-9\-_]*";
        ROLE_ARN = r"arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+";
        CALLBACK_TOKEN = r"[a-zA-Z0-9]+";
        TAG = r"([\p{L}\p{Z}\p{N}_.:/=+\-@]*)";
        // STS's (AssumeRole).
        ROLE_SESSION_NAME = r"[\w+=,.@-]*";
        EXTERNAL_ID = r"[\w+=,.@:\/-]*";
    }
}

/// Collects violations; [`Validator::finish`] turns them into AWS's message.
#[derive(Debug, Default)]
pub(crate) struct Validator {
    errors: Vec<String>,
    /// A pattern did not compile (a bug of the emulator's, not the caller's).
    broken: bool,
}

/// The member name as AWS's messages spell it: `PipelineExecutionArn` → `pipelineExecutionArn`.
fn member(path: &str) -> String {
    path.split('.')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

impl Validator {
    fn violation(&mut self, value: &str, path: &str, constraint: &str) {
        self.errors.push(format!(
            "Value {value} at '{}' failed to satisfy constraint: {constraint}",
            member(path)
        ));
    }

    /// A required member is present.
    pub(crate) fn required<T>(&mut self, path: &str, value: Option<&T>) -> bool {
        if value.is_none() {
            self.violation("null", path, "Member must not be null");
            false
        } else {
            true
        }
    }

    /// A required string, with its length and pattern.
    pub(crate) fn required_string(
        &mut self,
        path: &str,
        value: Option<&str>,
        min: usize,
        max: usize,
        pattern: Option<&'static Pattern>,
    ) {
        if self.required(path, value.as_ref()) {
            self.string(path, value, min, max, pattern);
        }
    }

    /// A string's length (in characters) and pattern.
    pub(crate) fn string(
        &mut self,
        path: &str,
        value: Option<&str>,
        min: usize,
        max: usize,
        pattern: Option<&'static Pattern>,
    ) {
        let Some(value) = value else { return };
        let shown = format!("'{value}'");
        let length = value.chars().count();
        if length < min {
            self.violation(
                &shown,
                path,
                &format!("Member must have length greater than or equal to {min}"),
            );
        }
        if length > max {
            self.violation(
                &shown,
                path,
                &format!("Member must have length less than or equal to {max}"),
            );
        }
        match pattern.map(|p| (p, p.matches(value))) {
            Some((_, Err(_))) => self.broken = true,
            Some((pattern, Ok(false))) => self.violation(
                &shown,
                path,
                &format!(
                    "Member must satisfy regular expression pattern: {}",
                    pattern.source
                ),
            ),
            Some((_, Ok(true))) | None => {}
        }
    }

    /// A number's range.
    pub(crate) fn range(&mut self, path: &str, value: Option<i64>, min: i64, max: Option<i64>) {
        let Some(value) = value else { return };
        if value < min {
            self.violation(
                &format!("'{value}'"),
                path,
                &format!("Member must have value greater than or equal to {min}"),
            );
        }
        if let Some(max) = max
            && value > max
        {
            self.violation(
                &format!("'{value}'"),
                path,
                &format!("Member must have value less than or equal to {max}"),
            );
        }
    }

    /// A list's length.
    pub(crate) fn list_len(&mut self, path: &str, len: Option<usize>, min: usize, max: usize) {
        let Some(len) = len else { return };
        if len < min {
            self.violation(
                &format!("'[{len} items]'"),
                path,
                &format!("Member must have length greater than or equal to {min}"),
            );
        }
        if len > max {
            self.violation(
                &format!("'[{len} items]'"),
                path,
                &format!("Member must have length less than or equal to {max}"),
            );
        }
    }

    /// One of several allowed values.
    /// `NextToken` and `MaxResults` of a List operation (1 to 100 a page).
    pub(crate) fn paging(&mut self, next_token: Option<&str>, max_results: Option<i64>) {
        self.string("NextToken", next_token, 0, 8192, None);
        self.range("MaxResults", max_results, 1, Some(100));
    }

    /// A List operation's `SortOrder`.
    pub(crate) fn sort_order(&mut self, value: Option<&str>) {
        self.one_of("SortOrder", value, &["Ascending", "Descending"]);
    }

    pub(crate) fn one_of(&mut self, path: &str, value: Option<&str>, allowed: &[&str]) {
        if let Some(value) = value.filter(|v| !allowed.contains(v)) {
            self.violation(
                &format!("'{value}'"),
                path,
                &format!(
                    "Member must satisfy enum value set: [{}]",
                    allowed.join(", ")
                ),
            );
        }
    }

    /// `Ok` when nothing was violated, else the ValidationException SageMaker would send (or
    /// InternalFailure if a pattern was broken).
    pub(crate) fn finish(self) -> Result<(), AwsError> {
        if self.broken {
            return Err(AwsError::internal());
        }
        match self.errors.as_slice() {
            [] => Ok(()),
            [one] => Err(AwsError::validation(format!(
                "1 validation error detected: {one}"
            ))),
            all => Err(AwsError::validation(format!(
                "{} validation errors detected: {}",
                all.len(),
                all.join("; ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        assert_eq!(patterns::ALL.len(), 11);
        for pattern in patterns::ALL {
            if let Err(e) = pattern.matches("") {
                panic!("{}: {e}", pattern.source);
            }
        }
    }

    #[test]
    fn a_broken_pattern_is_an_internal_error_not_a_panic() {
        static BROKEN: Pattern = Pattern::new("(unclosed");
        let mut v = Validator::default();
        v.string("PipelineName", Some("p"), 1, 256, Some(&BROKEN));
        v.string("RoleArn", Some("x"), 20, 2048, None);
        let error = v.finish().unwrap_err();
        assert_eq!(error.code, "InternalFailure");
        assert_eq!(error.status.as_u16(), 500);
        assert!(!error.message.contains("unclosed"), "{}", error.message);
    }

    #[test]
    fn messages_read_like_aws() {
        let mut v = Validator::default();
        v.string(
            "PipelineExecutionArn",
            Some("nope"),
            0,
            2048,
            Some(&patterns::PIPELINE_EXECUTION_ARN),
        );
        let error = v.finish().unwrap_err();
        assert_eq!(error.code, "ValidationException");
        assert_eq!(
            error.message,
            "1 validation error detected: Value 'nope' at 'pipelineExecutionArn' failed to satisfy constraint: Member must satisfy regular expression pattern: arn:aws[a-z\\-]*:sagemaker:[a-z0-9\\-]*:[0-9]{12}:pipeline\\/.*\\/execution\\/.*"
        );

        let mut v = Validator::default();
        v.required::<String>("ClientRequestToken", None);
        v.string(
            "CallbackToken",
            Some("short"),
            10,
            10,
            Some(&patterns::CALLBACK_TOKEN),
        );
        v.range("MaxResults", Some(101), 1, Some(100));
        let message = v.finish().unwrap_err().message;
        assert!(message.starts_with("3 validation errors detected: Value null at 'clientRequestToken' failed to satisfy constraint: Member must not be null; "), "{message}");
        assert!(message.contains("Value 'short' at 'callbackToken' failed to satisfy constraint: Member must have length greater than or equal to 10"));
        assert!(message.contains("Value '101' at 'maxResults' failed to satisfy constraint: Member must have value less than or equal to 100"));
    }

    #[test]
    fn patterns_match_whole_values() {
        let matches = |pattern: &Pattern, value: &str| pattern.matches(value).unwrap();
        let arn = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/abcdefghijkl";
        assert!(matches(&patterns::PIPELINE_EXECUTION_ARN, arn));
        assert!(!matches(
            &patterns::PIPELINE_EXECUTION_ARN,
            &format!("x{arn}")
        ));
        assert!(matches(&patterns::PIPELINE_NAME, "my-pipeline-1"));
        assert!(!matches(&patterns::PIPELINE_NAME, "-leading"));
        assert!(!matches(&patterns::PIPELINE_NAME, "under_score"));
        assert!(matches(&patterns::CALLBACK_TOKEN, "26vcYbeWsZ"));
        assert!(matches(
            &patterns::ROLE_ARN,
            "arn:aws:iam::123456789012:role/SageMakerRole"
        ));
        assert!(matches(
            &patterns::PIPELINE_ARN,
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/my-pipeline"
        ));
        assert!(!matches(&patterns::PIPELINE_ARN, "my-pipeline"));
        assert!(matches(
            &patterns::PIPELINE_NAME_OR_ARN,
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/my-pipeline"
        ));
    }
}
