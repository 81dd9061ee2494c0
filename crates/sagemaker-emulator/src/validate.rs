//! Server-side validation in AWS's words: every constraint the API model declares for the
//! members the emulator accepts (required, length, pattern, range), reported as one
//! ValidationException listing each violation, as SageMaker does:
//! `1 validation error detected: Value 'x' at 'pipelineExecutionArn' failed to satisfy
//! constraint: Member must satisfy regular expression pattern: ...`.

use std::sync::LazyLock;

use regex::Regex;

/// Patterns from SageMaker's API model (matched against the whole value).
pub(crate) mod patterns {
    pub(crate) const PIPELINE_EXECUTION_ARN: &str =
        r"arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]*:[0-9]{12}:pipeline\/.*\/execution\/.*";
    pub(crate) const PIPELINE_NAME: &str = r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,255}";
    pub(crate) const PIPELINE_NAME_OR_ARN: &str = r"(arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]*:([0-9]{12}|aws):pipeline/.*)?([a-zA-Z0-9](-*[a-zA-Z0-9]){0,255})";
    pub(crate) const PIPELINE_EXECUTION_NAME: &str = r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,81}";
    pub(crate) const PIPELINE_PARAMETER_NAME: &str = r"[A-Za-z0-9\-_]*";
    pub(crate) const ROLE_ARN: &str = r"arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+";
    pub(crate) const CALLBACK_TOKEN: &str = r"[a-zA-Z0-9]+";
    pub(crate) const TAG: &str = r"([\p{L}\p{Z}\p{N}_.:/=+\-@]*)";
}

fn full_match(pattern: &'static str) -> Regex {
    // The model's patterns are unanchored; AWS matches them against the whole value. A
    // pattern that does not compile is a bug in the constants above, caught by the tests.
    Regex::new(&format!("^(?:{pattern})$")).unwrap_or_else(|e| panic!("{pattern}: {e}"))
}

static COMPILED: LazyLock<Vec<(&'static str, Regex)>> = LazyLock::new(|| {
    use patterns::*;
    [
        PIPELINE_EXECUTION_ARN,
        PIPELINE_NAME,
        PIPELINE_NAME_OR_ARN,
        PIPELINE_EXECUTION_NAME,
        PIPELINE_PARAMETER_NAME,
        ROLE_ARN,
        CALLBACK_TOKEN,
        TAG,
    ]
    .into_iter()
    .map(|p| (p, full_match(p)))
    .collect()
});

fn matches(pattern: &'static str, value: &str) -> bool {
    COMPILED
        .iter()
        .find(|(p, _)| *p == pattern)
        .is_some_and(|(_, re)| re.is_match(value))
}

/// Collects violations; [`Validator::finish`] turns them into AWS's message.
#[derive(Debug, Default)]
pub(crate) struct Validator {
    errors: Vec<String>,
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
        pattern: Option<&'static str>,
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
        pattern: Option<&'static str>,
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
        if let Some(pattern) = pattern
            && !matches(pattern, value)
        {
            self.violation(
                &shown,
                path,
                &format!("Member must satisfy regular expression pattern: {pattern}"),
            );
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

    /// `Ok` when nothing was violated, else AWS's message.
    pub(crate) fn finish(self) -> Result<(), String> {
        match self.errors.len() {
            0 => Ok(()),
            1 => Err(format!("1 validation error detected: {}", self.errors[0])),
            n => Err(format!(
                "{n} validation errors detected: {}",
                self.errors.join("; ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        assert_eq!(COMPILED.len(), 8);
    }

    #[test]
    fn messages_read_like_aws() {
        let mut v = Validator::default();
        v.string(
            "PipelineExecutionArn",
            Some("nope"),
            0,
            2048,
            Some(patterns::PIPELINE_EXECUTION_ARN),
        );
        let message = v.finish().unwrap_err();
        assert_eq!(
            message,
            "1 validation error detected: Value 'nope' at 'pipelineExecutionArn' failed to satisfy constraint: Member must satisfy regular expression pattern: arn:aws[a-z\\-]*:sagemaker:[a-z0-9\\-]*:[0-9]{12}:pipeline\\/.*\\/execution\\/.*"
        );

        let mut v = Validator::default();
        v.required::<String>("ClientRequestToken", None);
        v.string(
            "CallbackToken",
            Some("short"),
            10,
            10,
            Some(patterns::CALLBACK_TOKEN),
        );
        v.range("MaxResults", Some(101), 1, Some(100));
        let message = v.finish().unwrap_err();
        assert!(message.starts_with("3 validation errors detected: Value null at 'clientRequestToken' failed to satisfy constraint: Member must not be null; "), "{message}");
        assert!(message.contains("Value 'short' at 'callbackToken' failed to satisfy constraint: Member must have length greater than or equal to 10"));
        assert!(message.contains("Value '101' at 'maxResults' failed to satisfy constraint: Member must have value less than or equal to 100"));
    }

    #[test]
    fn patterns_match_whole_values() {
        let arn = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/abcdefghijkl";
        assert!(matches(patterns::PIPELINE_EXECUTION_ARN, arn));
        assert!(!matches(
            patterns::PIPELINE_EXECUTION_ARN,
            &format!("x{arn}")
        ));
        assert!(matches(patterns::PIPELINE_NAME, "my-pipeline-1"));
        assert!(!matches(patterns::PIPELINE_NAME, "-leading"));
        assert!(!matches(patterns::PIPELINE_NAME, "under_score"));
        assert!(matches(patterns::CALLBACK_TOKEN, "26vcYbeWsZ"));
        assert!(matches(
            patterns::ROLE_ARN,
            "arn:aws:iam::123456789012:role/SageMakerRole"
        ));
        assert!(matches(
            patterns::PIPELINE_NAME_OR_ARN,
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/my-pipeline"
        ));
    }
}
