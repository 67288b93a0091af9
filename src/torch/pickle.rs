//! A small pickle interpreter for the `data.pkl` of a PyTorch zip checkpoint, which
//! builds values and never runs anything.
//!
//! Python's unpickler calls whatever callable the pickle names, which is how a
//! `.bin` file can run `os.system`. This one knows the opcodes `torch.save` writes
//! for a state dict (protocol 2, and the framing and memo opcodes of protocols 4 and
//! 5), and a short allow-list of globals: `collections.OrderedDict`, the torch
//! functions that rebuild a tensor or a parameter, and the storage types of the
//! supported dtypes. A `REDUCE` of an allowed callable is interpreted here (an
//! `OrderedDict()` becomes an empty dict, `_rebuild_tensor_v2(...)` becomes a tensor
//! view); any other global, opcode or persistent id is refused with an error naming
//! it.
//!
//! Everything is bounded: the interpreter only moves forward through the bytes, so
//! it ends after at most one step per byte, and the stack, the memo, the number of
//! containers, string lengths, tensor ranks and the number of tensors are capped.
//! Containers live in one arena and refer to each other by index, so a pickle that
//! builds a cycle or a million nested tuples costs memory in proportion to its
//! length and nothing is ever walked recursively.

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use safetensors::Dtype;

use super::view;
use super::TorchTensor;

/// Most values on the stack at once (`torch.save` batches items by 1000).
const MAX_STACK: usize = 1 << 20;
/// Most nested `MARK`s.
const MAX_MARKS: usize = 1 << 10;
/// Most memo entries.
const MAX_MEMO: usize = 1 << 22;
/// Most tuples, lists and dicts.
const MAX_CONTAINERS: usize = 1 << 22;
/// Longest string, in bytes (tensor names are far shorter).
const MAX_STRING: usize = 1 << 20;
/// Longest `GLOBAL` module or attribute name.
const MAX_GLOBAL_NAME: usize = 256;
/// Most tensors in one state dict.
pub(crate) const MAX_TENSORS: usize = 1 << 20;
/// Most dimensions of one tensor.
const MAX_RANK: usize = 64;
/// Most top-level keys quoted in an error.
const QUOTED_KEYS: usize = 8;
/// Most dicts looked into when listing the dicts of tensors a file holds.
const MAX_CANDIDATE_SEARCH: usize = 1 << 16;
/// Deepest key path listed among them.
const MAX_CANDIDATE_DEPTH: usize = 8;

/// A pickle that is not a loadable state dict: where in `data.pkl` and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickleError {
    offset: Option<usize>,
    /// Boxed so that results carrying the error stay small.
    kind: Box<PickleErrorKind>,
}

impl PickleError {
    /// Byte offset in the pickle of the opcode that failed, when the failure is at
    /// one opcode rather than in the value it built.
    pub fn offset(&self) -> Option<usize> {
        self.offset
    }

    /// What is wrong.
    pub fn kind(&self) -> &PickleErrorKind {
        &self.kind
    }
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.offset {
            Some(offset) => write!(f, "at byte {offset}: {}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl std::error::Error for PickleError {}

/// The ways a pickle can fail to be a state dict.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PickleErrorKind {
    /// The bytes end before the `STOP` opcode, or inside an opcode's argument.
    #[error("the pickle is truncated")]
    Truncated,
    /// An opcode that state dicts do not use (and which may build arbitrary
    /// objects), or a byte that is no opcode at all.
    #[error("opcode {} (0x{opcode:02x}) is not used by state dicts and is not supported", name.unwrap_or("<unknown>"))]
    UnsupportedOpcode {
        /// The opcode byte.
        opcode: u8,
        /// Its name in Python's `pickletools`, if it is an opcode.
        name: Option<&'static str>,
    },
    /// A pickle protocol newer than 5.
    #[error("pickle protocol {0} is not supported")]
    UnsupportedProtocol(u8),
    /// A global that is not on the allow-list. Nothing is imported or called.
    #[error("refusing global {module}.{name}: {}", global_hint(module, name))]
    ForbiddenGlobal {
        /// The module, e.g. `posix` or `torch.nn.modules.linear`.
        module: String,
        /// The attribute, e.g. `system` or `Linear`.
        name: String,
    },
    /// `REDUCE` of something that may not be called (a storage type, a number, …).
    #[error("refusing to call {callee}")]
    NotCallable {
        /// What was to be called.
        callee: String,
    },
    /// An allowed callable got arguments it never gets from `torch.save`.
    #[error("{callee}: {problem}")]
    BadArguments {
        /// The callable.
        callee: &'static str,
        /// What is wrong with the arguments.
        problem: &'static str,
    },
    /// An opcode found fewer values on the stack than it takes, or no `MARK`.
    #[error("{op} needs more values on the stack than there are")]
    StackUnderflow {
        /// The opcode.
        op: &'static str,
    },
    /// An opcode found a value of the wrong kind.
    #[error("{op} expects {expected} but found {found}")]
    WrongType {
        /// The opcode.
        op: &'static str,
        /// What it needs.
        expected: &'static str,
        /// What it found.
        found: &'static str,
    },
    /// `BINGET` of a memo slot that was never written.
    #[error("memo slot {0} is read before it is written")]
    MemoMissing(u32),
    /// A bound on the interpreter's memory was reached.
    #[error("more than {limit} {what}")]
    TooLarge {
        /// What was counted.
        what: &'static str,
        /// The bound.
        limit: usize,
    },
    /// A string that is not UTF-8.
    #[error("a string is not valid UTF-8")]
    InvalidUtf8,
    /// An integer that does not fit 64 bits.
    #[error("an integer is wider than 64 bits")]
    IntegerTooLarge,
    /// A persistent id that is not `('storage', storage type, key, location, numel)`.
    #[error("persistent id is not a torch storage reference: {0}")]
    PersistentId(&'static str),
    /// One storage key referenced with two different types or sizes.
    #[error("storage {key:?} is referenced as both {first} and {second}")]
    StorageConflict {
        /// The storage's key (its entry name under `data/`).
        key: String,
        /// The first reference, e.g. `FloatStorage of 12 elements`.
        first: String,
        /// A disagreeing reference.
        second: String,
    },
    /// A tensor with its negative or conjugate bit set, whose stored bytes are not
    /// its values.
    #[error(
        "a tensor has its negative or conjugate bit set, so its stored bytes are not its \
         values; call .resolve_neg() / .resolve_conj() on it before saving"
    )]
    LazyTensorBits,
    /// A tensor whose view reaches past the end of its storage.
    #[error(
        "tensor {tensor:?} (offset {offset}, shape {shape:?}, strides {strides:?}) reaches \
         past the {numel} elements of its storage"
    )]
    ViewOutOfStorage {
        /// The tensor's name.
        tensor: String,
        /// Its storage offset in elements.
        offset: usize,
        /// Its shape.
        shape: Vec<usize>,
        /// Its strides in elements.
        strides: Vec<usize>,
        /// Elements in the storage.
        numel: usize,
    },
    /// A tensor's byte size does not fit the platform's integers.
    #[error("tensor {0:?}: size overflows")]
    SizeOverflow(String),
    /// The pickled object is not a dict.
    #[error(
        "the file holds {found}, not a state dict; save the model's weights with \
         torch.save(model.state_dict(), path)"
    )]
    NotADict {
        /// What it holds, e.g. `a list`.
        found: &'static str,
    },
    /// A dict of dicts, such as a training checkpoint `{"state_dict": ..., "epoch": 3}`,
    /// read without a key that selects the state dict in it.
    #[error(
        "the file holds a dict of dicts{} (keys: {}), not a state dict; {}",
        at_key(key),
        quote_keys(keys),
        candidates_hint(candidates)
    )]
    NestedDict {
        /// The dotted key of the dict that was read (`None`: the top level).
        key: Option<String>,
        /// Its keys (the first few).
        keys: Vec<String>,
        /// The dicts of tensors inside it: dotted key and number of tensors.
        candidates: Vec<(String, usize)>,
    },
    /// A dotted key that does not lead to a dict.
    #[error("no dict at key {key:?}: {problem}; {}", candidates_hint(candidates))]
    KeyNotFound {
        /// The key asked for.
        key: String,
        /// Where the path stops, e.g. `"model" has no key "encoder"`.
        problem: String,
        /// The dicts of tensors in the file: dotted key and number of tensors.
        candidates: Vec<(String, usize)>,
    },
    /// A value in the state dict that is not a tensor.
    #[error("state dict entry {key:?} is {found}, not a tensor")]
    NonTensorValue {
        /// The entry.
        key: String,
        /// What it is.
        found: &'static str,
    },
    /// A key of the state dict that is not a string.
    #[error("state dict has a key that is {found}, not a string")]
    NonStringKey {
        /// What it is.
        found: &'static str,
    },
    /// One tensor name twice in the state dict.
    #[error("tensor name {0:?} appears twice")]
    DuplicateName(String),
}

/// ` at key "k"` for a nested dict, nothing for the top level.
fn at_key(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!(" at key {k:?}")).unwrap_or_default()
}

/// The dicts of tensors a file holds, as advice for choosing one.
fn candidates_hint(candidates: &[(String, usize)]) -> String {
    if candidates.is_empty() {
        return "it holds no dict of tensors; save the model's weights alone with \
                torch.save(model.state_dict(), path)"
            .to_owned();
    }
    let listed: Vec<String> = candidates
        .iter()
        .take(QUOTED_KEYS)
        .map(|(k, n)| format!("{k:?} ({n} tensor{})", if *n == 1 { "" } else { "s" }))
        .collect();
    let more = if candidates.len() > QUOTED_KEYS { ", …" } else { "" };
    format!(
        "the dicts of tensors in it are {}{more}; select one by its dotted key (soup's \
         --key {})",
        listed.join(", "),
        candidates[0].0
    )
}

fn quote_keys(keys: &[String]) -> String {
    let mut out: Vec<String> = keys.iter().take(QUOTED_KEYS).map(|k| format!("{k:?}")).collect();
    if keys.len() > QUOTED_KEYS {
        out.push("…".to_owned());
    }
    out.join(", ")
}

/// Advice for a refused global, by what it probably is.
fn global_hint(module: &str, name: &str) -> &'static str {
    if module == "__main__" || module.starts_with("torch.nn.modules") {
        "this looks like a whole model saved with torch.save(model); load it in Python and \
         save its weights with torch.save(model.state_dict(), path) or \
         save_pretrained(..., safe_serialization=True)"
    } else if name == "_rebuild_tensor_v3" || name == "UntypedStorage" || module == "torch" {
        "only dense tensors of dtype float32, float16, bfloat16, float64, int64, int32, \
         int16, int8, uint8 and bool are supported"
    } else if module.starts_with("torch") {
        "only plain dense tensors are supported (not quantized, sparse, nested or subclassed \
         tensors)"
    } else {
        "a state dict holds only tensors, and loading anything else means running code \
         named by the file (nothing was run)"
    }
}

/// A storage a state dict refers to, as the pickle describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    /// Its key: the storage's data is the archive entry `<prefix>/data/<key>`.
    pub key: String,
    /// Element type, from the storage type (`FloatStorage` is F32, …).
    pub dtype: Dtype,
    /// Number of elements.
    pub numel: usize,
}

/// The state dict a pickle describes, before its storages are found in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickledStateDict {
    /// The tensors in the dict's order; [`TorchTensor::storage`] indexes `storages`.
    pub tensors: Vec<TorchTensor>,
    /// The distinct storages the tensors use, in order of first use.
    pub storages: Vec<StorageRef>,
}

/// Interprets the bytes of a `data.pkl` as a state dict: a dict (or `OrderedDict`)
/// from names to tensors. On success every tensor's view lies inside its storage's
/// elements, names are distinct, and storage keys are distinct.
pub fn parse_pickle(bytes: &[u8]) -> Result<PickledStateDict, PickleError> {
    parse_pickle_at(bytes, None)
}

/// [`parse_pickle`] of the state dict at a dotted `key` inside the pickled dict: a
/// training checkpoint's `state_dict`, `model`, `ema.model`… A key segment may
/// itself contain dots (the longest key that matches is taken). When the top level
/// is already a state dict (no value is a dict) the key does not apply and the top
/// level is read. Values outside the dict read are never looked at, so an
/// optimizer's state or a Lightning callback's objects do not matter.
pub fn parse_pickle_at(bytes: &[u8], key: Option<&str>) -> Result<PickledStateDict, PickleError> {
    let mut machine = Machine::new(bytes);
    let root = machine.run()?;
    let (dict, path) = machine.select(&root, key)?;
    machine.state_dict(dict, path)
}

/// The callables and classes a state dict may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    Storage(Dtype),
}

impl Global {
    fn lookup(module: &str, name: &str) -> Option<Global> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
            ("torch", storage) => {
                let dtype = match storage {
                    "FloatStorage" => Dtype::F32,
                    "HalfStorage" => Dtype::F16,
                    "BFloat16Storage" => Dtype::BF16,
                    "DoubleStorage" => Dtype::F64,
                    "LongStorage" => Dtype::I64,
                    "IntStorage" => Dtype::I32,
                    "ShortStorage" => Dtype::I16,
                    "CharStorage" => Dtype::I8,
                    "ByteStorage" => Dtype::U8,
                    "BoolStorage" => Dtype::BOOL,
                    _ => return None,
                };
                Global::Storage(dtype)
            }
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Global::OrderedDict => "collections.OrderedDict",
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2",
            Global::RebuildParameter => "torch._utils._rebuild_parameter",
            Global::RebuildParameterWithState => "torch._utils._rebuild_parameter_with_state",
            Global::Storage(dtype) => storage_type_name(dtype),
        }
    }
}

/// A value on the stack, in the memo or in a container. Containers are indices into
/// the arena, so values are small and never own each other.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// Floats are read and kept only as "a float": no state dict needs their value.
    Float,
    /// Bytes (protocol 3+), kept only as "bytes" for the same reason.
    Bytes,
    Str(Rc<str>),
    Container(u32),
    Global(Global),
    /// Index into the storages found so far.
    Storage(u32),
    /// Index into the tensor views built so far.
    Tensor(u32),
    /// A value that could only be built by running code (an object of a class off
    /// the allow-list, a call of one…), with the error to report should the state
    /// dict read hold it, and where in the pickle it came from.
    Opaque(Rc<(usize, PickleErrorKind)>),
}

/// A tuple, list or dict in the arena.
#[derive(Debug)]
enum Container {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Key-value pairs in insertion order; duplicates are found when the state dict
    /// is read, never silently replaced.
    Dict(Vec<(Value, Value)>),
}

/// A tensor view before it has a name.
#[derive(Debug, Clone)]
struct View {
    storage: usize,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Where the opcode being run starts, for errors.
    op_start: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    arena: Vec<Container>,
    storages: Vec<StorageRef>,
    storage_keys: HashMap<String, usize>,
    views: Vec<View>,
}

type Step<T> = Result<T, PickleErrorKind>;

impl<'a> Machine<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Machine {
            bytes,
            pos: 0,
            op_start: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            arena: Vec::new(),
            storages: Vec::new(),
            storage_keys: HashMap::new(),
            views: Vec::new(),
        }
    }

    /// Runs to `STOP` and returns the value it leaves.
    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_start = self.pos;
            match self.step() {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(kind) => {
                    return Err(PickleError { offset: Some(self.op_start), kind: Box::new(kind) })
                }
            }
        }
    }

    fn take(&mut self, n: usize) -> Step<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(PickleErrorKind::Truncated)?;
        let slice = self.bytes.get(self.pos..end).ok_or(PickleErrorKind::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn take_array<const N: usize>(&mut self) -> Step<[u8; N]> {
        let slice = self.take(N)?;
        // `take` returned exactly N bytes.
        Ok(slice.try_into().unwrap_or([0; N]))
    }

    fn u8(&mut self) -> Step<u8> {
        Ok(self.take_array::<1>()?[0])
    }

    fn u32(&mut self) -> Step<u32> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }

    /// A line ending in `\n` (for `GLOBAL`), without the newline.
    fn line(&mut self) -> Step<&'a str> {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        let window = &rest[..rest.len().min(MAX_GLOBAL_NAME + 1)];
        let Some(len) = window.iter().position(|&b| b == b'\n') else {
            return Err(if rest.len() > MAX_GLOBAL_NAME {
                PickleErrorKind::TooLarge {
                    what: "bytes in a global's name",
                    limit: MAX_GLOBAL_NAME,
                }
            } else {
                PickleErrorKind::Truncated
            });
        };
        let line = self.take(len + 1)?;
        std::str::from_utf8(&line[..len]).map_err(|_| PickleErrorKind::InvalidUtf8)
    }

    fn string(&mut self, len: usize) -> Step<Rc<str>> {
        if len > MAX_STRING {
            return Err(PickleErrorKind::TooLarge { what: "bytes in a string", limit: MAX_STRING });
        }
        let bytes = self.take(len)?;
        let s = std::str::from_utf8(bytes).map_err(|_| PickleErrorKind::InvalidUtf8)?;
        Ok(Rc::from(s))
    }

    fn push(&mut self, value: Value) -> Step<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(PickleErrorKind::TooLarge {
                what: "values on the stack",
                limit: MAX_STACK,
            });
        }
        self.stack.push(value);
        Ok(())
    }

    fn pop(&mut self, op: &'static str) -> Step<Value> {
        // A value below the innermost mark belongs to an enclosing MARK.
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(PickleErrorKind::StackUnderflow { op });
        }
        self.stack.pop().ok_or(PickleErrorKind::StackUnderflow { op })
    }

    fn top(&self, op: &'static str) -> Step<&Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(PickleErrorKind::StackUnderflow { op });
        }
        self.stack.last().ok_or(PickleErrorKind::StackUnderflow { op })
    }

    /// The values pushed since the innermost `MARK`, removing the mark.
    fn pop_mark(&mut self, op: &'static str) -> Step<Vec<Value>> {
        let mark = self.marks.pop().ok_or(PickleErrorKind::StackUnderflow { op })?;
        Ok(self.stack.split_off(mark))
    }

    fn new_container(&mut self, container: Container) -> Step<Value> {
        if self.arena.len() >= MAX_CONTAINERS {
            return Err(PickleErrorKind::TooLarge {
                what: "tuples, lists and dicts",
                limit: MAX_CONTAINERS,
            });
        }
        let id = self.arena.len() as u32; // < MAX_CONTAINERS
        self.arena.push(container);
        Ok(Value::Container(id))
    }

    fn tuple(&mut self, items: Vec<Value>) -> Step<()> {
        let value = self.new_container(Container::Tuple(items))?;
        self.push(value)
    }

    fn memo_put(&mut self, key: u32) -> Step<()> {
        let value = self.top("PUT")?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&key) {
            return Err(PickleErrorKind::TooLarge { what: "memo entries", limit: MAX_MEMO });
        }
        self.memo.insert(key, value);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Step<()> {
        let value = self.memo.get(&key).cloned().ok_or(PickleErrorKind::MemoMissing(key))?;
        self.push(value)
    }

    /// The mutable contents of the container `value` refers to, if it is one.
    fn container_mut(&mut self, value: &Value) -> Option<&mut Container> {
        match value {
            Value::Container(id) => self.arena.get_mut(*id as usize),
            _ => None,
        }
    }

    /// An allowed global, or an opaque value naming one that is not.
    fn global(&self, module: &str, name: &str) -> Value {
        match Global::lookup(module, name) {
            Some(global) => Value::Global(global),
            None => self.opaque(PickleErrorKind::ForbiddenGlobal {
                module: module.to_owned(),
                name: name.to_owned(),
            }),
        }
    }

    /// An opaque value standing for what the opcode being run could not build.
    fn opaque(&self, kind: PickleErrorKind) -> Value {
        Value::Opaque(Rc::new((self.op_start, kind)))
    }

    fn kind(&self, value: &Value) -> &'static str {
        match value {
            Value::Opaque(_) => "an object that cannot be loaded without running code",
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Float => "a float",
            Value::Bytes => "bytes",
            Value::Str(_) => "a string",
            Value::Container(id) => match self.arena.get(*id as usize) {
                Some(Container::Tuple(_)) => "a tuple",
                Some(Container::List(_)) => "a list",
                Some(Container::Dict(_)) => "a dict",
                None => "an unknown object",
            },
            Value::Global(_) => "a class or function",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }

    fn is_dict(&self, value: &Value) -> bool {
        matches!(value, Value::Container(id) if matches!(self.arena.get(*id as usize), Some(Container::Dict(_))))
    }

    fn tuple_items(&self, value: &Value, op: &'static str) -> Step<&[Value]> {
        match value {
            Value::Container(id) => match self.arena.get(*id as usize) {
                Some(Container::Tuple(items)) => Ok(items),
                _ => Err(self.wrong(op, "a tuple", value)),
            },
            _ => Err(self.wrong(op, "a tuple", value)),
        }
    }

    fn wrong(&self, op: &'static str, expected: &'static str, found: &Value) -> PickleErrorKind {
        PickleErrorKind::WrongType { op, expected, found: self.kind(found) }
    }

    /// Runs one opcode; returns the result at `STOP`.
    fn step(&mut self) -> Step<Option<Value>> {
        let op = self.u8()?;
        match op {
            0x80 => {
                // PROTO
                let protocol = self.u8()?;
                if protocol > 5 {
                    return Err(PickleErrorKind::UnsupportedProtocol(protocol));
                }
            }
            0x95 => {
                // FRAME: a length hint for buffered readers; the data follows inline.
                self.take(8)?;
            }
            b'.' => {
                // STOP
                let value = self.pop("STOP")?;
                return Ok(Some(value));
            }
            b'(' => {
                if self.marks.len() >= MAX_MARKS {
                    return Err(PickleErrorKind::TooLarge {
                        what: "nested marks",
                        limit: MAX_MARKS,
                    });
                }
                self.marks.push(self.stack.len());
            }
            b'N' => self.push(Value::None)?,
            0x88 => self.push(Value::Bool(true))?,
            0x89 => self.push(Value::Bool(false))?,
            b'J' => {
                let v = i32::from_le_bytes(self.take_array()?);
                self.push(Value::Int(v.into()))?;
            }
            b'K' => {
                let v = self.u8()?;
                self.push(Value::Int(v.into()))?;
            }
            b'M' => {
                let v = u16::from_le_bytes(self.take_array()?);
                self.push(Value::Int(v.into()))?;
            }
            0x8a => {
                // LONG1: little-endian two's complement of n bytes.
                let n = usize::from(self.u8()?);
                let digits = self.take(n)?;
                if n > 8 {
                    // A large number (a seed, a sample count) outside the state dict
                    // is harmless; inside, it is an error.
                    let value = self.opaque(PickleErrorKind::IntegerTooLarge);
                    self.push(value)?;
                    return Ok(None);
                }
                let mut buf =
                    if digits.last().is_some_and(|&b| b & 0x80 != 0) { [0xff; 8] } else { [0; 8] };
                buf[..n].copy_from_slice(digits);
                self.push(Value::Int(i64::from_le_bytes(buf)))?;
            }
            b'G' => {
                self.take(8)?;
                self.push(Value::Float)?;
            }
            0x8b => {
                // LONG4: an integer of more than 255 bytes, never a tensor's.
                let n = self.u32()? as usize;
                if n > MAX_STRING {
                    return Err(PickleErrorKind::TooLarge {
                        what: "bytes in a string",
                        limit: MAX_STRING,
                    });
                }
                self.take(n)?;
                let value = self.opaque(PickleErrorKind::IntegerTooLarge);
                self.push(value)?;
            }
            b'X' => {
                let len = self.u32()? as usize;
                let s = self.string(len)?;
                self.push(Value::Str(s))?;
            }
            0x8c => {
                let len = usize::from(self.u8()?);
                let s = self.string(len)?;
                self.push(Value::Str(s))?;
            }
            0x8d => {
                let len = u64::from_le_bytes(self.take_array()?);
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                let s = self.string(len)?;
                self.push(Value::Str(s))?;
            }
            b'}' => {
                let v = self.new_container(Container::Dict(Vec::new()))?;
                self.push(v)?;
            }
            b']' => {
                let v = self.new_container(Container::List(Vec::new()))?;
                self.push(v)?;
            }
            b')' => self.tuple(Vec::new())?,
            b't' => {
                let items = self.pop_mark("TUPLE")?;
                self.tuple(items)?;
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop("TUPLEn")?);
                }
                items.reverse();
                self.tuple(items)?;
            }
            b'a' => {
                let item = self.pop("APPEND")?;
                self.append("APPEND", vec![item])?;
            }
            b'e' => {
                let items = self.pop_mark("APPENDS")?;
                self.append("APPENDS", items)?;
            }
            b's' => {
                let value = self.pop("SETITEM")?;
                let key = self.pop("SETITEM")?;
                self.set_items("SETITEM", vec![key, value])?;
            }
            b'u' => {
                let items = self.pop_mark("SETITEMS")?;
                self.set_items("SETITEMS", items)?;
            }
            b'q' => {
                let key = self.u8()?;
                self.memo_put(key.into())?;
            }
            b'r' => {
                let key = self.u32()?;
                self.memo_put(key)?;
            }
            0x94 => {
                // MEMOIZE: the next free slot.
                let key = u32::try_from(self.memo.len()).unwrap_or(u32::MAX);
                self.memo_put(key)?;
            }
            b'h' => {
                let key = self.u8()?;
                self.memo_get(key.into())?;
            }
            b'j' => {
                let key = self.u32()?;
                self.memo_get(key)?;
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                let global = self.global(module, name);
                self.push(global)?;
            }
            0x93 => {
                // STACK_GLOBAL
                let name = self.pop("STACK_GLOBAL")?;
                let module = self.pop("STACK_GLOBAL")?;
                let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                    return Err(self.wrong("STACK_GLOBAL", "two strings", &module));
                };
                let global = self.global(module, name);
                self.push(global)?;
            }
            b'R' => {
                let args = self.pop("REDUCE")?;
                let callee = self.pop("REDUCE")?;
                let result = match self.reduce(&callee, &args) {
                    Ok(value) => value,
                    Err(e @ PickleErrorKind::TooLarge { .. }) => return Err(e),
                    Err(kind) => self.opaque(kind),
                };
                self.push(result)?;
            }
            0x81 | 0x92 => {
                // NEWOBJ, NEWOBJ_EX: `cls.__new__(cls, *args)` builds an object of a
                // class, which only its code could do; state dicts never need one.
                if op == 0x92 {
                    self.pop("NEWOBJ_EX")?;
                }
                let _args = self.pop("NEWOBJ")?;
                let class = self.pop("NEWOBJ")?;
                let object = match class {
                    Value::Opaque(_) => class,
                    _ => self.opaque(PickleErrorKind::UnsupportedOpcode {
                        opcode: op,
                        name: opcode_name(op),
                    }),
                };
                self.push(object)?;
            }
            b'Q' => {
                let pid = self.pop("BINPERSID")?;
                let storage = match self.persistent_load(&pid) {
                    Ok(value) => value,
                    Err(e @ PickleErrorKind::PersistentId(_)) => self.opaque(e),
                    Err(e) => return Err(e),
                };
                self.push(storage)?;
            }
            b'b' => {
                // BUILD: torch sets an OrderedDict's `_metadata` attribute this way;
                // attributes of a dict carry no weights, so the state is dropped. An
                // opaque object's state is dropped with it.
                let state = self.pop("BUILD")?;
                let target = self.top("BUILD")?.clone();
                match (&target, self.container_mut(&target)) {
                    (_, Some(Container::Dict(_))) | (Value::Opaque(_), _) => {}
                    _ => return Err(self.wrong("BUILD", "a dict", &target)),
                }
                drop(state);
            }
            b'1' => {
                // POP_MARK
                self.pop_mark("POP_MARK")?;
            }
            b'B' | b'C' | 0x8e => {
                // BINBYTES, SHORT_BINBYTES, BINBYTES8 (protocol 3+): skipped, kept as
                // "bytes" (no state dict holds bytes).
                let len = match op {
                    b'B' => self.u32()? as usize,
                    b'C' => usize::from(self.u8()?),
                    _ => usize::try_from(u64::from_le_bytes(self.take_array()?))
                        .unwrap_or(usize::MAX),
                };
                if len > MAX_STRING {
                    return Err(PickleErrorKind::TooLarge {
                        what: "bytes in a string",
                        limit: MAX_STRING,
                    });
                }
                self.take(len)?;
                self.push(Value::Bytes)?;
            }
            0x8f => {
                // EMPTY_SET (protocol 4): a set is held like a list.
                let v = self.new_container(Container::List(Vec::new()))?;
                self.push(v)?;
            }
            0x90 => {
                // ADDITEMS
                let items = self.pop_mark("ADDITEMS")?;
                self.append("ADDITEMS", items)?;
            }
            0x91 => {
                // FROZENSET
                let items = self.pop_mark("FROZENSET")?;
                let v = self.new_container(Container::List(items))?;
                self.push(v)?;
            }
            b'0' => {
                self.pop("POP")?;
            }
            b'2' => {
                // DUP
                let top = self.top("DUP")?.clone();
                self.push(top)?;
            }
            other => {
                return Err(PickleErrorKind::UnsupportedOpcode {
                    opcode: other,
                    name: opcode_name(other),
                })
            }
        }
        Ok(None)
    }

    fn append(&mut self, op: &'static str, items: Vec<Value>) -> Step<()> {
        let target = self.top(op)?.clone();
        match self.container_mut(&target) {
            Some(Container::List(list)) => {
                list.extend(items);
                Ok(())
            }
            _ => Err(self.wrong(op, "a list", &target)),
        }
    }

    fn set_items(&mut self, op: &'static str, items: Vec<Value>) -> Step<()> {
        if !items.len().is_multiple_of(2) {
            return Err(PickleErrorKind::StackUnderflow { op });
        }
        let target = self.top(op)?.clone();
        match self.container_mut(&target) {
            Some(Container::Dict(dict)) => {
                let mut items = items.into_iter();
                while let (Some(k), Some(v)) = (items.next(), items.next()) {
                    dict.push((k, v));
                }
                Ok(())
            }
            _ => Err(self.wrong(op, "a dict", &target)),
        }
    }

    /// `REDUCE`: calls an allowed callable by building its result. An opaque
    /// callee or argument makes the result opaque for the same reason.
    fn reduce(&mut self, callee: &Value, args: &Value) -> Step<Value> {
        let global = match callee {
            Value::Global(g) => *g,
            Value::Opaque(_) => return Ok(callee.clone()),
            other => {
                return Err(PickleErrorKind::NotCallable { callee: self.kind(other).to_owned() })
            }
        };
        let args = self.tuple_items(args, "REDUCE")?.to_vec();
        if let Some(opaque) = args.iter().find(|a| matches!(a, Value::Opaque(_))) {
            return Ok(opaque.clone());
        }
        let bad = |problem| PickleErrorKind::BadArguments { callee: global.name(), problem };
        match global {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return Err(bad("expected no arguments"));
                }
                self.new_container(Container::Dict(Vec::new()))
            }
            Global::RebuildTensorV2 => self.rebuild_tensor(&args),
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let expected = if global == Global::RebuildParameter { 3 } else { 4 };
                if args.len() != expected {
                    return Err(bad("expected (tensor, requires_grad, hooks[, state])"));
                }
                match (&args[0], &args[1]) {
                    (Value::Tensor(_), Value::Bool(_)) => Ok(args[0].clone()),
                    _ => Err(bad("expected a tensor and a bool")),
                }
            }
            Global::Storage(..) => {
                Err(PickleErrorKind::NotCallable { callee: global.name().to_owned() })
            }
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
    /// backward_hooks[, metadata])`.
    fn rebuild_tensor(&mut self, args: &[Value]) -> Step<Value> {
        let bad = |problem| PickleErrorKind::BadArguments {
            callee: Global::RebuildTensorV2.name(),
            problem,
        };
        let [storage, offset, shape, strides, requires_grad, hooks, rest @ ..] = args else {
            return Err(bad(
                "expected (storage, offset, size, stride, requires_grad, hooks[, metadata])",
            ));
        };
        if rest.len() > 1 {
            return Err(bad("too many arguments"));
        }
        let &Value::Storage(storage) = storage else {
            return Err(bad("the first argument is not a storage"));
        };
        let offset =
            as_count(offset).ok_or_else(|| bad("the storage offset is not a non-negative int"))?;
        let shape = self
            .counts(shape)
            .ok_or_else(|| bad("the size is not a tuple of non-negative ints"))?;
        let strides = self
            .counts(strides)
            .ok_or_else(|| bad("the stride is not a tuple of non-negative ints"))?;
        if shape.len() != strides.len() {
            return Err(bad("size and stride have different lengths"));
        }
        if shape.len() > MAX_RANK {
            return Err(bad("more than 64 dimensions"));
        }
        if !matches!(requires_grad, Value::Bool(_)) {
            return Err(bad("requires_grad is not a bool"));
        }
        if !self.is_dict(hooks) {
            return Err(bad("backward_hooks is not a dict"));
        }
        if let Some(metadata) = rest.first() {
            // {'neg': True} or {'conj': True}: the bytes are not the values.
            let Value::Container(id) = metadata else {
                return Err(bad("metadata is not a dict"));
            };
            let Some(Container::Dict(entries)) = self.arena.get(*id as usize) else {
                return Err(bad("metadata is not a dict"));
            };
            if entries.iter().any(|(_, v)| !matches!(v, Value::Bool(false))) {
                return Err(PickleErrorKind::LazyTensorBits);
            }
        }
        if self.views.len() >= MAX_TENSORS {
            return Err(PickleErrorKind::TooLarge { what: "tensors", limit: MAX_TENSORS });
        }
        self.views.push(View { storage: storage as usize, offset, shape, strides });
        Ok(Value::Tensor((self.views.len() - 1) as u32))
    }

    fn counts(&self, value: &Value) -> Option<Vec<usize>> {
        self.tuple_items(value, "").ok()?.iter().map(as_count).collect()
    }

    /// `BINPERSID` with `('storage', storage_type, key, location, numel)`.
    fn persistent_load(&mut self, pid: &Value) -> Step<Value> {
        let bad = PickleErrorKind::PersistentId;
        let items = self.tuple_items(pid, "BINPERSID").map_err(|_| bad("not a tuple"))?.to_vec();
        let [tag, storage_type, key, location, numel] = &items[..] else {
            return Err(bad("not a tuple of five items"));
        };
        if !matches!(tag, Value::Str(s) if &**s == "storage") {
            return Err(bad("the first item is not 'storage'"));
        }
        let &Value::Global(Global::Storage(dtype)) = storage_type else {
            return Err(bad("the second item is not a storage type"));
        };
        let Value::Str(key) = key else {
            return Err(bad("the key is not a string"));
        };
        if !matches!(location, Value::Str(_)) {
            return Err(bad("the location is not a string"));
        }
        let numel = as_count(numel).ok_or(bad("the element count is not a non-negative int"))?;
        let describe = |t: &str, n: usize| format!("{t} of {n} elements");
        if let Some(&index) = self.storage_keys.get(&**key) {
            let first = &self.storages[index];
            if first.dtype != dtype || first.numel != numel {
                let first_type = storage_type_name(first.dtype);
                return Err(PickleErrorKind::StorageConflict {
                    key: key.to_string(),
                    first: describe(first_type, first.numel),
                    second: describe(storage_type_name(dtype), numel),
                });
            }
            return Ok(Value::Storage(index as u32));
        }
        if self.storages.len() >= MAX_TENSORS {
            return Err(PickleErrorKind::TooLarge { what: "storages", limit: MAX_TENSORS });
        }
        self.storage_keys.insert(key.to_string(), self.storages.len());
        self.storages.push(StorageRef { key: key.to_string(), dtype, numel });
        Ok(Value::Storage((self.storages.len() - 1) as u32))
    }

    /// The error an opaque value stands for, at the opcode that made it.
    fn opaque_error(value: &Value) -> Option<PickleError> {
        match value {
            Value::Opaque(rc) => {
                let (offset, kind) = &**rc;
                Some(PickleError { offset: Some(*offset), kind: Box::new(kind.clone()) })
            }
            _ => None,
        }
    }

    /// The entries of a dict value, or `None` for anything else.
    fn dict_entries(&self, value: &Value) -> Option<&[(Value, Value)]> {
        match value {
            Value::Container(id) => match self.arena.get(*id as usize) {
                Some(Container::Dict(entries)) => Some(entries),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether a dict is a state dict's shape: no value is itself a dict.
    fn is_flat(&self, entries: &[(Value, Value)]) -> bool {
        !entries.iter().any(|(_, v)| self.is_dict(v))
    }

    /// The dict to read as the state dict, and its dotted key: the top level, or
    /// the dict at `key` when the top level is not a state dict.
    fn select(
        &self,
        root: &Value,
        key: Option<&str>,
    ) -> Result<(Value, Option<String>), PickleError> {
        let plain = |kind| PickleError { offset: None, kind: Box::new(kind) };
        if let Some(e) = Self::opaque_error(root) {
            return Err(e);
        }
        let Some(entries) = self.dict_entries(root) else {
            let found = match root {
                Value::Tensor(_) => "a single tensor",
                other => self.kind(other),
            };
            return Err(plain(PickleErrorKind::NotADict { found }));
        };
        let Some(key) = key.filter(|_| !self.is_flat(entries)) else {
            return Ok((root.clone(), None));
        };
        let segments: Vec<&str> = key.split('.').collect();
        let mut current = root.clone();
        let mut taken = 0;
        while taken < segments.len() {
            let entries = self.dict_entries(&current).unwrap_or_default();
            // The longest run of segments that is one key of this dict.
            let found = (taken + 1..=segments.len()).rev().find_map(|end| {
                let name = segments[taken..end].join(".");
                entries
                    .iter()
                    .find(|(k, _)| matches!(k, Value::Str(s) if **s == *name))
                    .map(|(_, v)| (end, v.clone()))
            });
            let at = if taken == 0 {
                "the top level".to_owned()
            } else {
                format!("{:?}", segments[..taken].join("."))
            };
            let Some((end, value)) = found else {
                return Err(plain(PickleErrorKind::KeyNotFound {
                    key: key.to_owned(),
                    problem: format!("{at} has no key {:?}", segments[taken]),
                    candidates: self.candidates(root, ""),
                }));
            };
            if self.dict_entries(&value).is_none() {
                let name = segments[..end].join(".");
                if let Some(e) = Self::opaque_error(&value) {
                    return Err(e);
                }
                return Err(plain(PickleErrorKind::KeyNotFound {
                    key: key.to_owned(),
                    problem: format!("{name:?} is {}, not a dict", self.kind(&value)),
                    candidates: self.candidates(root, ""),
                }));
            }
            current = value;
            taken = end;
        }
        Ok((current, Some(key.to_owned())))
    }

    /// The dicts of tensors under `root` (breadth first, bounded), as dotted keys
    /// under `prefix` with their number of tensors: what a key could select.
    fn candidates(&self, root: &Value, prefix: &str) -> Vec<(String, usize)> {
        let mut found = Vec::new();
        let mut queue = std::collections::VecDeque::from([(root.clone(), prefix.to_owned(), 0)]);
        let mut seen = std::collections::HashSet::new();
        while let Some((value, path, depth)) = queue.pop_front() {
            let Value::Container(id) = value else { continue };
            if !seen.insert(id) || seen.len() > MAX_CANDIDATE_SEARCH {
                continue;
            }
            let Some(entries) = self.dict_entries(&value) else { continue };
            let tensors = entries.iter().filter(|(_, v)| matches!(v, Value::Tensor(_))).count();
            if tensors > 0 && tensors == entries.len() && !path.is_empty() {
                found.push((path.clone(), tensors));
            }
            if depth >= MAX_CANDIDATE_DEPTH {
                continue;
            }
            for (k, v) in entries {
                if let (Value::Str(k), true) = (k, self.is_dict(v)) {
                    let child = if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
                    queue.push_back((v.clone(), child, depth + 1));
                }
            }
        }
        found
    }

    /// Reads a dict as a state dict (`key` is its dotted key, for errors).
    fn state_dict(
        &mut self,
        dict: Value,
        key: Option<String>,
    ) -> Result<PickledStateDict, PickleError> {
        let plain = |kind| PickleError { offset: None, kind: Box::new(kind) };
        let entries = self.dict_entries(&dict).map(<[_]>::to_vec).unwrap_or_default();
        if !self.is_flat(&entries) {
            let keys = entries
                .iter()
                .take(QUOTED_KEYS + 1)
                .map(|(k, _)| match k {
                    Value::Str(s) => s.to_string(),
                    other => format!("<{}>", self.kind(other)),
                })
                .collect();
            let candidates = self.candidates(&dict, key.as_deref().unwrap_or(""));
            return Err(plain(PickleErrorKind::NestedDict { key, keys, candidates }));
        }
        let mut tensors = Vec::with_capacity(entries.len());
        let mut seen = std::collections::HashSet::with_capacity(entries.len());
        // Storages renumbered in order of first use by a tensor of the dict; one
        // referenced only from dropped state is not read.
        let mut renumber: HashMap<usize, usize> = HashMap::new();
        let mut used: Vec<StorageRef> = Vec::new();
        for (key, value) in &entries {
            let Value::Str(name) = key else {
                return Err(plain(PickleErrorKind::NonStringKey { found: self.kind(key) }));
            };
            if let Some(e) = Self::opaque_error(value) {
                return Err(e);
            }
            let &Value::Tensor(view) = value else {
                return Err(plain(PickleErrorKind::NonTensorValue {
                    key: name.to_string(),
                    found: self.kind(value),
                }));
            };
            if !seen.insert(name.clone()) {
                return Err(plain(PickleErrorKind::DuplicateName(name.to_string())));
            }
            let view = &self.views[view as usize];
            let storage = &self.storages[view.storage];
            let tensor = TorchTensor {
                name: name.to_string(),
                dtype: storage.dtype,
                shape: view.shape.clone(),
                strides: view.strides.clone(),
                storage: *renumber.entry(view.storage).or_insert_with(|| {
                    used.push(storage.clone());
                    used.len() - 1
                }),
                storage_offset: view.offset,
            };
            check_view(&tensor, storage).map_err(plain)?;
            tensors.push(tensor);
        }
        Ok(PickledStateDict { tensors, storages: used })
    }
}

/// Checks that a tensor's elements lie inside its storage's.
fn check_view(tensor: &TorchTensor, storage: &StorageRef) -> Step<()> {
    let overflow = || PickleErrorKind::SizeOverflow(tensor.name.clone());
    let esize = view::element_size(tensor.dtype);
    // The whole storage and the tensor's dense size must be addressable in bytes.
    storage.numel.checked_mul(esize).ok_or_else(overflow)?;
    let numel = view::numel(&tensor.shape).ok_or_else(overflow)?;
    numel.checked_mul(esize).ok_or_else(overflow)?;
    let outside = || PickleErrorKind::ViewOutOfStorage {
        tensor: tensor.name.clone(),
        offset: tensor.storage_offset,
        shape: tensor.shape.clone(),
        strides: tensor.strides.clone(),
        numel: storage.numel,
    };
    match view::last_element(tensor.storage_offset, &tensor.shape, &tensor.strides) {
        view::Last::Empty => Ok(()),
        view::Last::At(last) if last < storage.numel => Ok(()),
        view::Last::At(_) | view::Last::Overflow => Err(outside()),
    }
}

/// The torch class that stores elements of `dtype`.
fn storage_type_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F32 => "torch.FloatStorage",
        Dtype::F16 => "torch.HalfStorage",
        Dtype::BF16 => "torch.BFloat16Storage",
        Dtype::F64 => "torch.DoubleStorage",
        Dtype::I64 => "torch.LongStorage",
        Dtype::I32 => "torch.IntStorage",
        Dtype::I16 => "torch.ShortStorage",
        Dtype::I8 => "torch.CharStorage",
        Dtype::U8 => "torch.ByteStorage",
        _ => "torch.BoolStorage",
    }
}

fn as_count(value: &Value) -> Option<usize> {
    match value {
        Value::Int(v) => usize::try_from(*v).ok(),
        _ => None,
    }
}

/// The `pickletools` name of an opcode byte.
fn opcode_name(op: u8) -> Option<&'static str> {
    Some(match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}
