//! Pipeline definitions: the JSON document CreatePipeline receives, parsed into the step graph
//! the emulator runs.
//!
//! The document is what the SageMaker Python SDK writes: `{"Version": "2020-12-01",
//! "Parameters": [...], "Steps": [...]}`. Each step has `Name`, `Type`, `Arguments`, optionally
//! `DependsOn`, `DisplayName`, `Description`. A step depends on the steps its `DependsOn` names
//! and on every step its `Arguments` reference (`{"Get": "Steps.A.OutputParameters['x']"}`); a
//! Condition step's `IfSteps` and `ElseSteps` are steps of their own that run only on their
//! branch. A Callback step's messages go to the emulator's SQS queue its `SqsQueueUrl` names
//! by its last two path segments (`.../ACCOUNT/NAME`), made on first use.
//!
//! # Scripting a scenario
//!
//! A step's `Arguments` may hold an `Emulator` object that only the emulator reads:
//!
//! | key | meaning | default |
//! | --- | --- | --- |
//! | `DurationSeconds` | how long the step runs (emulated seconds); ignored by Callback steps, which wait for SendPipelineExecutionStep* | Lambda 10, Condition and Fail 0, others 30 |
//! | `FailAttempts` | the first N attempts fail (RetryPipelineExecution makes a new attempt) | 0 |
//! | `FailureReason` | the failure reason of a scripted failure | a sentence naming the step |
//! | `StartSeconds` | how long the step is `Starting` before it is `Executing` (a Callback step sends its message, a Lambda step invokes its function, only then); a stop meanwhile stops it at once | 0 |
//! | `TimeoutSeconds` | Lambda only: the function's timeout, 1 to 600 (Lambda's limit: more is refused) | 120 |
//! | `StopSeconds` | steps other than Callback and Lambda: how long stopping takes | 0 |
//! | `Outcome` | Condition only: `true` runs `IfSteps`, `false` runs `ElseSteps` | true |
//! | `OutputParameters` | Lambda only: the outputs (name to string) reported on success | none |
//!
//! A Lambda step whose duration exceeds its timeout fails with a timeout reason at the timeout.
//! A definition whose Lambda step asks for a timeout above 600 seconds (10 minutes, the most a
//! Lambda function can run) is refused: CreatePipeline and UpdatePipeline answer
//! ValidationException.

use std::collections::HashMap;

use serde_json::Value;

/// A parsed pipeline definition.
#[derive(Debug, Clone)]
pub(crate) struct PipelineSpec {
    /// Every step, nested branch steps included, in definition order.
    pub(crate) steps: Vec<StepSpec>,
    /// Declared parameters: name and default value (as a string), if any.
    pub(crate) parameters: Vec<(String, Option<String>)>,
}

/// What a step is, as far as running it goes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StepKind {
    /// Waits for SendPipelineExecutionStepSuccess/Failure.
    Callback { sqs_queue_url: String },
    /// Runs a function that cannot be interrupted, bounded by its timeout.
    Lambda {
        function_arn: String,
        timeout: f64,
        outputs: Vec<(String, String)>,
    },
    /// Chooses a branch.
    Condition { outcome: bool },
    /// Fails the execution with a message.
    Fail { error_message: String },
    /// Anything else: runs for a duration, stops promptly.
    Job,
}

/// One step of a definition.
#[derive(Debug, Clone)]
pub(crate) struct StepSpec {
    pub(crate) name: String,
    /// The definition's `Type`: `Training`, `Callback`, ...
    pub(crate) step_type: String,
    pub(crate) display_name: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) kind: StepKind,
    /// Indices of the steps this one waits for.
    pub(crate) depends_on: Vec<usize>,
    /// For a step inside a Condition step's branch: (the condition's index, the branch).
    pub(crate) branch: Option<(usize, bool)>,
    /// The step's `Arguments` without the `Emulator` key (the Callback message's arguments).
    pub(crate) arguments: Value,
    pub(crate) duration: f64,
    pub(crate) fail_attempts: u32,
    pub(crate) failure_reason: String,
    pub(crate) stop_seconds: f64,
    /// How long the step is Starting before it is Executing.
    pub(crate) start_seconds: f64,
}

/// The longest a Lambda function may run, in seconds (Lambda's own limit).
const MAX_LAMBDA_TIMEOUT: f64 = 600.0;

/// The step types SageMaker Pipelines accepts.
const KNOWN_TYPES: &[&str] = &[
    "Training",
    "Processing",
    "Transform",
    "Tuning",
    "Model",
    "RegisterModel",
    "Condition",
    "Callback",
    "Lambda",
    "Fail",
    "EMR",
    "QualityCheck",
    "ClarifyCheck",
    "AutoML",
    "Notebook",
];

struct Parser {
    steps: Vec<StepSpec>,
    /// Raw references found in each step's arguments, resolved once every name is known.
    references: Vec<Vec<String>>,
    explicit: Vec<Vec<String>>,
}

/// Parses and checks a definition; the error is a sentence for a ValidationException.
pub(crate) fn parse(text: &str) -> Result<PipelineSpec, String> {
    let doc: Value = serde_json::from_str(text)
        .map_err(|e| format!("Pipeline definition is not valid JSON: {e}"))?;
    let Some(doc) = doc.as_object() else {
        return Err("Pipeline definition must be a JSON object.".into());
    };
    match doc.get("Version").and_then(Value::as_str) {
        Some("2020-12-01") => {}
        Some(other) => {
            return Err(format!(
                "Unsupported pipeline definition version '{other}'; expected '2020-12-01'."
            ));
        }
        None => return Err("Pipeline definition must have a Version ('2020-12-01').".into()),
    }
    let parameters = match doc.get("Parameters") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|p| {
                let name = p
                    .get("Name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| "Every pipeline parameter must have a Name.".to_string())?;
                let default = p.get("DefaultValue").map(value_string);
                Ok::<_, String>((name.to_string(), default))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("Pipeline definition Parameters must be a list.".into()),
    };
    let Some(Value::Array(steps)) = doc.get("Steps") else {
        return Err("Pipeline definition must have a list of Steps.".into());
    };
    if steps.is_empty() {
        return Err("Pipeline definition must have at least one step.".into());
    }
    let mut parser = Parser {
        steps: Vec::new(),
        references: Vec::new(),
        explicit: Vec::new(),
    };
    for step in steps {
        parser.step(step, None)?;
    }
    parser.finish(parameters)
}

fn number(emulator: Option<&Value>, key: &str, default: f64) -> Result<f64, String> {
    match emulator.and_then(|e| e.get(key)) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .filter(|n| n.is_finite() && *n >= 0.0)
            .ok_or_else(|| format!("Emulator.{key} must be a number of seconds, at least 0.")),
    }
}

impl Parser {
    fn step(&mut self, step: &Value, branch: Option<(usize, bool)>) -> Result<usize, String> {
        let Some(obj) = step.as_object() else {
            return Err("Every step must be a JSON object.".into());
        };
        let name = obj
            .get("Name")
            .and_then(Value::as_str)
            .ok_or("Every step must have a Name.")?
            .to_string();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "Step name '{name}' must be 1 to 64 characters of letters, digits, '-' and '_'."
            ));
        }
        if self.steps.iter().any(|s| s.name == name) {
            return Err(format!("Step name '{name}' is used more than once."));
        }
        let step_type = obj
            .get("Type")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("Step '{name}' must have a Type."))?
            .to_string();
        if !KNOWN_TYPES.contains(&step_type.as_str()) {
            return Err(format!(
                "Step '{name}' has unknown Type '{step_type}'; known types: {}.",
                KNOWN_TYPES.join(", ")
            ));
        }
        let mut arguments = match obj.get("Arguments") {
            None | Some(Value::Null) => Value::Object(Default::default()),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => return Err(format!("Step '{name}' Arguments must be an object.")),
        };
        let emulator = arguments.as_object_mut().and_then(|a| a.remove("Emulator"));
        if let Some(e) = &emulator
            && !e.is_object()
        {
            return Err(format!(
                "Step '{name}' Arguments.Emulator must be an object."
            ));
        }
        let emulator = emulator.as_ref();

        let default_duration = match step_type.as_str() {
            "Lambda" => 10.0,
            "Condition" | "Fail" => 0.0,
            _ => 30.0,
        };
        let duration = number(emulator, "DurationSeconds", default_duration)?;
        let stop_seconds = number(emulator, "StopSeconds", 0.0)?;
        let start_seconds = number(emulator, "StartSeconds", 0.0)?;
        let fail_attempts = match emulator.and_then(|e| e.get("FailAttempts")) {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    format!("Step '{name}' Emulator.FailAttempts must be a whole number.")
                })?,
        };
        let failure_reason = emulator
            .and_then(|e| e.get("FailureReason"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("Step '{name}' failed (scripted by the emulator)."));

        let kind = match step_type.as_str() {
            "Callback" => StepKind::Callback {
                sqs_queue_url: obj
                    .get("SqsQueueUrl")
                    .or_else(|| arguments.get("SqsQueueUrl"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("Callback step '{name}' must have an SqsQueueUrl."))?
                    .to_string(),
            },
            "Lambda" => {
                let timeout = number(emulator, "TimeoutSeconds", 120.0)?;
                if !(1.0..=MAX_LAMBDA_TIMEOUT).contains(&timeout) {
                    return Err(format!(
                        "Step '{name}' Emulator.TimeoutSeconds must be between 1 and 600: a Lambda function runs for at most 10 minutes."
                    ));
                }
                let outputs = match emulator.and_then(|e| e.get("OutputParameters")) {
                    Some(Value::Object(map)) => map
                        .iter()
                        .map(|(k, v)| {
                            let value = v.as_str().map(str::to_string).unwrap_or(v.to_string());
                            (k.clone(), value)
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                StepKind::Lambda {
                    function_arn: obj
                        .get("FunctionArn")
                        .or_else(|| arguments.get("FunctionArn"))
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("Lambda step '{name}' must have a FunctionArn."))?
                        .to_string(),
                    timeout,
                    outputs,
                }
            }
            "Condition" => StepKind::Condition {
                outcome: emulator
                    .and_then(|e| e.get("Outcome"))
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
            },
            "Fail" => StepKind::Fail {
                error_message: arguments
                    .get("ErrorMessage")
                    .map(|m| m.as_str().map(str::to_string).unwrap_or(m.to_string()))
                    .unwrap_or_default(),
            },
            _ => StepKind::Job,
        };

        let explicit = match obj.get("DependsOn") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(names)) => names
                .iter()
                .map(|n| {
                    n.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("Step '{name}' DependsOn must list step names."))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(format!("Step '{name}' DependsOn must be a list.")),
        };
        let mut references = Vec::new();
        collect_step_references(&arguments, &mut references);

        let index = self.steps.len();
        self.steps.push(StepSpec {
            name: name.clone(),
            step_type: step_type.clone(),
            display_name: obj
                .get("DisplayName")
                .and_then(Value::as_str)
                .map(str::to_string),
            description: obj
                .get("Description")
                .and_then(Value::as_str)
                .map(str::to_string),
            kind,
            depends_on: branch.map(|(c, _)| vec![c]).unwrap_or_default(),
            branch,
            arguments: arguments.clone(),
            duration,
            fail_attempts,
            failure_reason,
            stop_seconds,
            start_seconds,
        });
        self.references.push(references);
        self.explicit.push(explicit);

        if step_type == "Condition" {
            for (key, on) in [("IfSteps", true), ("ElseSteps", false)] {
                match arguments.get(key) {
                    None | Some(Value::Null) => {}
                    Some(Value::Array(children)) => {
                        for child in children {
                            self.step(child, Some((index, on)))?;
                        }
                    }
                    Some(_) => return Err(format!("Step '{name}' {key} must be a list.")),
                }
            }
        }
        Ok(index)
    }

    fn finish(mut self, parameters: Vec<(String, Option<String>)>) -> Result<PipelineSpec, String> {
        let by_name: HashMap<String, usize> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        for i in 0..self.steps.len() {
            let names = self.explicit[i].iter().chain(self.references[i].iter());
            let mut deps = std::mem::take(&mut self.steps[i].depends_on);
            for dep in names {
                let Some(&j) = by_name.get(dep) else {
                    return Err(format!(
                        "Step '{}' depends on step '{dep}', which is not in the definition.",
                        self.steps[i].name
                    ));
                };
                if j == i {
                    return Err(format!("Step '{dep}' depends on itself."));
                }
                if !deps.contains(&j) {
                    deps.push(j);
                }
            }
            self.steps[i].depends_on = deps;
        }
        // A step inside a branch already depends on its condition; the condition's own
        // Arguments reference its branches' steps only as definitions, not as data.
        let branches: Vec<Option<usize>> = self
            .steps
            .iter()
            .map(|s| s.branch.map(|(c, _)| c))
            .collect();
        for (i, step) in self.steps.iter_mut().enumerate() {
            if step.step_type == "Condition" {
                step.depends_on.retain(|&j| branches[j] != Some(i));
            }
        }
        if let Some(name) = find_cycle(&self.steps) {
            return Err(format!("The step graph has a cycle through step '{name}'."));
        }
        Ok(PipelineSpec {
            steps: self.steps,
            parameters,
        })
    }
}

/// A JSON value as the string SageMaker would substitute for it.
pub(crate) fn value_string(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What references in a step's arguments resolve against at run time.
pub(crate) struct Bindings<'a> {
    pub(crate) parameters: &'a [(String, String)],
    pub(crate) execution_arn: &'a str,
    pub(crate) execution_id: &'a str,
    /// Output parameters of steps that have them, by step name.
    pub(crate) outputs: &'a dyn Fn(&str, &str) -> Option<String>,
}

/// `value` with `{"Get": ...}` references and `Std:Join` resolved where they can be (pipeline
/// parameters, execution variables, step output parameters); anything else is kept as written.
pub(crate) fn resolve(value: &Value, bindings: &Bindings<'_>) -> Value {
    match value {
        Value::Object(map) if map.len() == 1 => {
            if let Some(Value::String(path)) = map.get("Get") {
                return lookup(path, bindings).map_or_else(|| value.clone(), Value::String);
            }
            if let Some(join) = map.get("Std:Join") {
                let on = join.get("On").and_then(Value::as_str).unwrap_or_default();
                if let Some(Value::Array(items)) = join.get("Values") {
                    let parts: Vec<String> = items
                        .iter()
                        .map(|item| value_string(&resolve(item, bindings)))
                        .collect();
                    return Value::String(parts.join(on));
                }
            }
            Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), resolve(v, bindings)))
                    .collect(),
            )
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), resolve(v, bindings)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| resolve(v, bindings)).collect()),
        other => other.clone(),
    }
}

fn lookup(path: &str, bindings: &Bindings<'_>) -> Option<String> {
    if let Some(name) = path.strip_prefix("Parameters.") {
        return bindings
            .parameters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone());
    }
    match path {
        "Execution.PipelineExecutionArn" => return Some(bindings.execution_arn.to_string()),
        "Execution.PipelineExecutionId" => return Some(bindings.execution_id.to_string()),
        _ => {}
    }
    // Steps.<name>.OutputParameters['<output>']
    let rest = path.strip_prefix("Steps.")?;
    let (step, rest) = rest.split_once(".OutputParameters['")?;
    let output = rest.strip_suffix("']")?;
    (bindings.outputs)(step, output)
}

/// Every step named by a `{"Get": "Steps.<name>..."}` inside `value`.
fn collect_step_references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(path)) = map.get("Get")
                && let Some(rest) = path.strip_prefix("Steps.")
            {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect();
                if !name.is_empty() && !out.contains(&name) {
                    out.push(name);
                }
            }
            for v in map.values() {
                collect_step_references(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_step_references(v, out)),
        _ => {}
    }
}

/// The name of a step on a dependency cycle, if there is one (Kahn's algorithm).
fn find_cycle(steps: &[StepSpec]) -> Option<String> {
    let mut remaining: Vec<usize> = steps.iter().map(|s| s.depends_on.len()).collect();
    let mut ready: Vec<usize> = (0..steps.len()).filter(|&i| remaining[i] == 0).collect();
    let mut done = 0;
    while let Some(i) = ready.pop() {
        done += 1;
        for (j, step) in steps.iter().enumerate() {
            if step.depends_on.contains(&i) {
                remaining[j] -= 1;
                if remaining[j] == 0 {
                    ready.push(j);
                }
            }
        }
    }
    (done < steps.len())
        .then(|| (0..steps.len()).find(|&i| remaining[i] > 0))
        .flatten()
        .map(|i| steps[i].name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(spec: &PipelineSpec, deps: &[usize]) -> Vec<String> {
        deps.iter().map(|&i| spec.steps[i].name.clone()).collect()
    }

    #[test]
    fn parses_steps_dependencies_and_emulator_scripts() {
        let doc = json!({
            "Version": "2020-12-01",
            "Parameters": [{"Name": "InputUri", "Type": "String", "DefaultValue": "s3://b/k"}],
            "Steps": [
                {"Name": "Prepare", "Type": "Processing", "Arguments": {"Emulator": {"DurationSeconds": 5}}},
                {"Name": "Approve", "Type": "Callback", "DependsOn": ["Prepare"],
                 "SqsQueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/approvals",
                 "Arguments": {"model": {"Get": "Parameters.InputUri"}},
                 "OutputParameters": [{"OutputName": "decision", "OutputType": "String"}]},
                {"Name": "Evaluate", "Type": "Lambda",
                 "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:eval",
                 "Arguments": {"decision": {"Get": "Steps.Approve.OutputParameters['decision']"},
                               "Emulator": {"DurationSeconds": 300, "TimeoutSeconds": 200, "FailAttempts": 1}}}
            ]
        });
        let spec = parse(&doc.to_string()).unwrap();
        assert_eq!(
            spec.parameters,
            [("InputUri".to_string(), Some("s3://b/k".to_string()))]
        );
        assert_eq!(spec.steps.len(), 3);
        assert_eq!(spec.steps[0].duration, 5.0);
        assert_eq!(names(&spec, &spec.steps[1].depends_on), ["Prepare"]);
        assert_eq!(names(&spec, &spec.steps[2].depends_on), ["Approve"]);
        assert!(
            matches!(spec.steps[1].kind, StepKind::Callback { ref sqs_queue_url } if sqs_queue_url.ends_with("/approvals"))
        );
        assert!(matches!(spec.steps[2].kind, StepKind::Lambda { timeout, .. } if timeout == 200.0));
        assert_eq!(spec.steps[2].fail_attempts, 1);
        assert!(spec.steps[2].arguments.get("Emulator").is_none());
    }

    #[test]
    fn condition_branches_become_steps_of_their_own() {
        let doc = json!({
            "Version": "2020-12-01",
            "Steps": [
                {"Name": "Check", "Type": "Condition", "Arguments": {
                    "Conditions": [],
                    "IfSteps": [{"Name": "Deploy", "Type": "Model", "Arguments": {}}],
                    "ElseSteps": [{"Name": "Stop", "Type": "Fail", "Arguments": {"ErrorMessage": "bad model"}}],
                    "Emulator": {"Outcome": false}}}
            ]
        });
        let spec = parse(&doc.to_string()).unwrap();
        assert_eq!(spec.steps.len(), 3);
        assert_eq!(spec.steps[1].branch, Some((0, true)));
        assert_eq!(spec.steps[2].branch, Some((0, false)));
        assert_eq!(spec.steps[2].depends_on, [0]);
        assert_eq!(spec.steps[0].kind, StepKind::Condition { outcome: false });
        assert_eq!(
            spec.steps[2].kind,
            StepKind::Fail {
                error_message: "bad model".into()
            }
        );
    }

    #[test]
    fn references_resolve_against_parameters_execution_and_outputs() {
        let parameters = [("Threshold".to_string(), "0.8".to_string())];
        let outputs = |step: &str, name: &str| {
            (step == "Approve" && name == "decision").then(|| "go".to_string())
        };
        let bindings = Bindings {
            parameters: &parameters,
            execution_arn: "arn:x/execution/abc",
            execution_id: "abc",
            outputs: &outputs,
        };
        let arguments = json!({
            "threshold": {"Get": "Parameters.Threshold"},
            "run": {"Std:Join": {"On": "/", "Values": ["s3://b", {"Get": "Execution.PipelineExecutionId"}]}},
            "decision": {"Get": "Steps.Approve.OutputParameters['decision']"},
            "unknown": {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"},
            "list": [{"Get": "Execution.PipelineExecutionArn"}, 3]
        });
        assert_eq!(
            resolve(&arguments, &bindings),
            json!({
                "threshold": "0.8",
                "run": "s3://b/abc",
                "decision": "go",
                "unknown": {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"},
                "list": ["arn:x/execution/abc", 3]
            })
        );
    }

    #[test]
    fn rejects_what_sagemaker_rejects() {
        let cases = [
            ("not json", "not valid JSON"),
            (
                r#"{"Version": "2019-01-01", "Steps": []}"#,
                "Unsupported pipeline definition version",
            ),
            (
                r#"{"Version": "2020-12-01", "Steps": []}"#,
                "at least one step",
            ),
            (
                r#"{"Version": "2020-12-01", "Steps": [{"Name": "A", "Type": "Magic"}]}"#,
                "unknown Type 'Magic'",
            ),
            (
                r#"{"Version": "2020-12-01", "Steps": [{"Name": "A", "Type": "Training"}, {"Name": "A", "Type": "Training"}]}"#,
                "more than once",
            ),
            (
                r#"{"Version": "2020-12-01", "Steps": [{"Name": "A", "Type": "Training", "DependsOn": ["B"]}]}"#,
                "not in the definition",
            ),
            (
                r#"{"Version": "2020-12-01", "Steps": [{"Name": "A", "Type": "Training", "DependsOn": ["B"]}, {"Name": "B", "Type": "Training", "DependsOn": ["A"]}]}"#,
                "cycle",
            ),
            (
                r#"{"Version": "2020-12-01", "Steps": [{"Name": "A", "Type": "Callback"}]}"#,
                "SqsQueueUrl",
            ),
            (
                r#"{"Version": "2020-12-01", "Steps": [{"Name": "A", "Type": "Lambda"}]}"#,
                "FunctionArn",
            ),
            (
                r#"{"Version": "2020-12-01", "Steps": [{"Name": "A b", "Type": "Training"}]}"#,
                "letters, digits",
            ),
            (
                r#"{"Version": "2020-12-01", "Steps": [{"Name": "A", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": -1}}}]}"#,
                "at least 0",
            ),
            (
                r#"{"Version": "2020-12-01", "Steps": [{"Name": "A", "Type": "Lambda", "FunctionArn": "arn:f", "Arguments": {"Emulator": {"TimeoutSeconds": 601}}}]}"#,
                "between 1 and 600",
            ),
            (
                r#"{"Version": "2020-12-01", "Steps": [{"Name": "A", "Type": "Training", "Arguments": {"Emulator": {"StartSeconds": "soon"}}}]}"#,
                "Emulator.StartSeconds must be a number",
            ),
        ];
        for (doc, expected) in cases {
            let error = parse(doc).unwrap_err();
            assert!(error.contains(expected), "{doc}: {error}");
        }
    }
}
