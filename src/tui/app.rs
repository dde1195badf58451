//! The terminal UI's state and everything that changes it: one `App`,
//! `on_key` for the keyboard, `tick` for the training channels and the
//! run store, and `render` that only draws (see `views`). Tests drive the
//! same `App` against ratatui's `TestBackend`.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc::TryRecvError;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::Frame;

use super::editor::EditorState;
use super::history::{RunHistory, XAxis};
use super::theme::{builtin_names, Theme};
use super::views;
use crate::config::{self, Experiment};
use crate::runs::{parse_event_line, RunStatus, RunStore, RunSummary};
use crate::train::{self, Control, TrainEvent, TrainHandle};

/// The factor the `+` and `-` keys scale the learning rate by.
pub const LR_STEP: f64 = 1.25;
/// How often the run list is re-read from disk while it is shown.
const REFRESH: Duration = Duration::from_secs(3);
/// Events taken from one run's channel per tick, so a flood of step events
/// never starves the keyboard.
const EVENTS_PER_TICK: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Runs,
    Editor,
    Dashboard,
    Compare,
}

/// A run training on a worker thread of this process.
pub struct LiveRun {
    pub handle: TrainHandle,
    pub history: RunHistory,
    /// The worker's channel closed: it has ended.
    pub ended: bool,
}

/// New lines of a run's `events.jsonl` written by another process.
#[derive(Debug, Clone)]
pub struct LogTail {
    path: PathBuf,
    offset: u64,
}

impl LogTail {
    /// The events appended since the last read; a line still being written
    /// waits for its newline.
    fn read_new(&mut self) -> Vec<TrainEvent> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        if f.read_to_end(&mut bytes).is_err() {
            return Vec::new();
        }
        let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        self.offset += end as u64 + 1;
        bytes[..end]
            .split(|&b| b == b'\n')
            .filter_map(|l| std::str::from_utf8(l).ok())
            .filter_map(|l| parse_event_line(l.trim()))
            .collect()
    }
}

/// A run shown from disk (finished, or trained by another process).
pub struct ViewedRun {
    pub history: RunHistory,
    pub tail: LogTail,
    pub name: String,
    /// Another process holds the run's lock: it is training there.
    pub locked: bool,
    run: crate::runs::Run,
}

/// Runs overlaid in the compare view.
pub struct CompareState {
    pub runs: Vec<CompareRun>,
    pub axis: XAxis,
    pub log_y: bool,
    pub smoothing: f64,
    /// Validation loss instead of training loss.
    pub validation: bool,
    /// Config keys whose values differ: `(key, value per run)`.
    pub differing: Vec<(String, Vec<String>)>,
}

pub struct CompareRun {
    pub id: String,
    pub name: String,
    /// As the run store says it (a run no process trains is crashed).
    pub status: String,
    pub history: RunHistory,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Confirmed {
    DeleteRun(String),
    StopRun(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum InputPurpose {
    /// An exact learning rate for this live run.
    SetLr(String),
    /// Where the editor's config is saved.
    SavePath,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PickSource {
    Builtin(String),
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Modal {
    Help,
    Confirm {
        message: String,
        action: Confirmed,
    },
    Input {
        prompt: String,
        buffer: String,
        purpose: InputPurpose,
        error: Option<String>,
    },
    /// Quitting while a run trains: stop it, or keep it going headless.
    QuitTraining,
    /// Where a new experiment starts from.
    Picker {
        items: Vec<(String, PickSource)>,
        selected: usize,
    },
}

/// How the UI ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuitChoice {
    /// Nothing was training.
    Plain,
    /// Stop the live runs (each writes a checkpoint).
    StopRuns,
    /// Keep them training, printing plain progress in the terminal.
    KeepRuns,
}

/// The run list and its filter and marks.
#[derive(Debug, Default)]
pub struct RunsList {
    pub all: Vec<RunSummary>,
    pub selected: usize,
    pub filter: String,
    pub filtering: bool,
    pub marked: BTreeSet<String>,
    pub error: Option<String>,
}

impl RunsList {
    pub fn visible(&self) -> Vec<&RunSummary> {
        let f = self.filter.to_lowercase();
        self.all
            .iter()
            .filter(|r| {
                f.is_empty()
                    || r.id.to_lowercase().contains(&f)
                    || r.name.to_lowercase().contains(&f)
                    || r.status.as_str().contains(&f)
            })
            .collect()
    }

    pub fn current(&self) -> Option<&RunSummary> {
        self.visible().get(self.selected).copied()
    }
}

pub struct App {
    pub store: RunStore,
    pub theme: Theme,
    pub screen: Screen,
    pub runs: RunsList,
    pub editor: Option<EditorState>,
    pub live: Vec<LiveRun>,
    /// The run the dashboard shows.
    pub viewing: Option<String>,
    pub viewed: Option<ViewedRun>,
    pub compare: Option<CompareState>,
    pub modal: Option<Modal>,
    /// A line for the footer: `(text, is_error)`.
    pub status: Option<(String, bool)>,
    pub quit: Option<QuitChoice>,
    /// The dashboard's lower pane at small sizes: samples (false) or log.
    pub show_log: bool,
    /// The compare view's lower pane at small sizes.
    pub compare_pane: usize,
    /// This process's resident memory, sampled each tick.
    pub memory: Option<u64>,
    /// Whether `tick` samples the memory (off in snapshot tests).
    pub measure_memory: bool,
    /// Whether live runs are stopped by SIGTERM and SIGHUP (the real UI).
    pub stop_on_signal: bool,
    /// Where `configs/` and relative paths are looked for.
    pub workdir: PathBuf,
    last_refresh: Option<Instant>,
}

impl App {
    pub fn new(store: RunStore, theme: Theme, workdir: PathBuf) -> Self {
        let mut app = App {
            store,
            theme,
            screen: Screen::Runs,
            runs: RunsList::default(),
            editor: None,
            live: Vec::new(),
            viewing: None,
            viewed: None,
            compare: None,
            modal: None,
            status: None,
            quit: None,
            show_log: false,
            compare_pane: 0,
            memory: None,
            measure_memory: true,
            stop_on_signal: false,
            workdir,
            last_refresh: None,
        };
        app.refresh_runs();
        app
    }

    pub fn render(&self, frame: &mut Frame) {
        views::render(self, frame);
    }

    /// Whether a run of this process still trains.
    pub fn training(&self) -> bool {
        self.live.iter().any(|r| !r.ended)
    }

    /// The history the dashboard shows.
    pub fn dashboard_history(&self) -> Option<&RunHistory> {
        let id = self.viewing.as_ref()?;
        if let Some(l) = self.live.iter().find(|l| &l.handle.run_id == id) {
            return Some(&l.history);
        }
        self.viewed.as_ref().map(|v| &v.history)
    }

    pub fn live_run(&self, id: &str) -> Option<&LiveRun> {
        self.live.iter().find(|l| l.handle.run_id == id)
    }

    fn say(&mut self, text: impl Into<String>) {
        self.status = Some((text.into(), false));
    }

    fn fail(&mut self, text: impl Into<String>) {
        self.status = Some((text.into(), true));
    }

    // ---------------------------------------------------------------- tick

    /// Takes in what happened since the last frame: worker events, new
    /// lines of followed logs, the run list. Never blocks.
    pub fn tick(&mut self) {
        for live in &mut self.live {
            if live.ended {
                continue;
            }
            for _ in 0..EVENTS_PER_TICK {
                match live.handle.try_recv() {
                    Ok(e) => live.history.apply(&e),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        live.ended = true;
                        break;
                    }
                }
            }
        }
        if let Some(v) = &mut self.viewed {
            for e in v.tail.read_new() {
                v.history.apply(&e);
            }
            v.locked = v.run.is_locked();
        }
        if self.measure_memory {
            self.memory = resident_memory();
        }
        let due = self.last_refresh.is_none_or(|t| t.elapsed() >= REFRESH);
        if self.screen == Screen::Runs && due {
            self.refresh_runs();
        }
    }

    pub fn refresh_runs(&mut self) {
        match self.store.list() {
            Ok(list) => {
                self.runs.all = list;
                self.runs.error = None;
            }
            Err(e) => self.runs.error = Some(e.to_string()),
        }
        let n = self.runs.visible().len();
        if self.runs.selected >= n {
            self.runs.selected = n.saturating_sub(1);
        }
        self.last_refresh = Some(Instant::now());
    }

    // ---------------------------------------------------------------- keys

    pub fn on_key(&mut self, key: KeyEvent) {
        if key.kind == KeyEventKind::Release {
            return;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.request_quit();
            return;
        }
        if self.modal.is_some() {
            self.modal_key(key);
            return;
        }
        // Typing into a field or filter takes every key.
        let typing = match self.screen {
            Screen::Runs => self.runs.filtering,
            Screen::Editor => self
                .editor
                .as_ref()
                .is_some_and(|e| e.entry.is_some() || e.filtering),
            _ => false,
        };
        if !typing {
            match key.code {
                KeyCode::Char('?') => {
                    self.modal = Some(Modal::Help);
                    return;
                }
                KeyCode::Char('q') => {
                    self.request_quit();
                    return;
                }
                KeyCode::Char('t') => {
                    self.next_theme();
                    return;
                }
                _ => {}
            }
        }
        match self.screen {
            Screen::Runs => self.runs_key(key),
            Screen::Editor => self.editor_key(key),
            Screen::Dashboard => self.dashboard_key(key),
            Screen::Compare => self.compare_key(key),
        }
    }

    pub fn request_quit(&mut self) {
        if self.training() {
            self.modal = Some(Modal::QuitTraining);
        } else {
            self.quit = Some(QuitChoice::Plain);
        }
    }

    fn next_theme(&mut self) {
        if !self.theme.colored {
            self.say("NO_COLOR is set: themes are off");
            return;
        }
        let names = builtin_names();
        let i = names.iter().position(|n| *n == self.theme.name);
        let next = names[i.map_or(0, |i| (i + 1) % names.len())];
        self.theme = Theme::builtin(next);
        match super::theme::save_theme(self.store.root(), next) {
            Ok(()) => self.say(format!("theme: {next} (kept for the next launch)")),
            Err(e) => self.fail(format!("theme: {next}, but it could not be saved: {e}")),
        }
    }

    fn modal_key(&mut self, key: KeyEvent) {
        let Some(modal) = self.modal.take() else {
            return;
        };
        match modal {
            Modal::Help => {
                // Any key closes help.
            }
            Modal::Confirm { message, action } => match key.code {
                KeyCode::Char('y') | KeyCode::Enter => self.confirmed(action),
                KeyCode::Char('n') | KeyCode::Esc => self.say("cancelled"),
                _ => self.modal = Some(Modal::Confirm { message, action }),
            },
            Modal::QuitTraining => match key.code {
                KeyCode::Char('s') => self.quit = Some(QuitChoice::StopRuns),
                KeyCode::Char('k') => self.quit = Some(QuitChoice::KeepRuns),
                KeyCode::Esc | KeyCode::Char('n') => {}
                _ => self.modal = Some(Modal::QuitTraining),
            },
            Modal::Input {
                prompt,
                mut buffer,
                purpose,
                ..
            } => match key.code {
                KeyCode::Esc => {}
                KeyCode::Enter => {
                    if let Err(e) = self.input_done(&purpose, &buffer) {
                        self.modal = Some(Modal::Input {
                            prompt,
                            buffer,
                            purpose,
                            error: Some(e),
                        });
                    }
                }
                other => {
                    edit_text(&mut buffer, other, key.modifiers);
                    self.modal = Some(Modal::Input {
                        prompt,
                        buffer,
                        purpose,
                        error: None,
                    });
                }
            },
            Modal::Picker {
                items,
                mut selected,
            } => match key.code {
                KeyCode::Esc => {}
                KeyCode::Enter => {
                    if let Some((label, source)) = items.get(selected) {
                        let (label, source) = (label.clone(), source.clone());
                        self.open_editor_from(&label, &source);
                    }
                }
                KeyCode::Up | KeyCode::Char('k') => {
                    selected = selected.saturating_sub(1);
                    self.modal = Some(Modal::Picker { items, selected });
                }
                KeyCode::Down | KeyCode::Char('j') => {
                    selected = (selected + 1).min(items.len().saturating_sub(1));
                    self.modal = Some(Modal::Picker { items, selected });
                }
                _ => self.modal = Some(Modal::Picker { items, selected }),
            },
        }
    }

    fn confirmed(&mut self, action: Confirmed) {
        match action {
            Confirmed::DeleteRun(id) => match self.store.remove(&id) {
                Ok(()) => {
                    self.runs.marked.remove(&id);
                    self.say(format!("deleted run {id}"));
                    self.refresh_runs();
                }
                Err(e) => self.fail(e.to_string()),
            },
            Confirmed::StopRun(id) => {
                if let Some(l) = self.live_run(&id) {
                    l.handle.send(Control::Stop);
                    self.say("stopping after this step; a checkpoint follows");
                }
            }
        }
    }

    fn input_done(&mut self, purpose: &InputPurpose, text: &str) -> Result<(), String> {
        match purpose {
            InputPurpose::SetLr(id) => {
                let lr: f64 = text
                    .trim()
                    .parse()
                    .map_err(|_| format!("{text:?} is not a number; e.g. 3e-4"))?;
                if !(lr.is_finite() && lr > 0.0) {
                    return Err("the learning rate must be a positive number".into());
                }
                if let Some(l) = self.live_run(id) {
                    l.handle.send(Control::SetLr { lr });
                    self.say(format!("learning rate -> {lr:e} at the next step"));
                }
                Ok(())
            }
            InputPurpose::SavePath => {
                let Some(editor) = &self.editor else {
                    return Ok(());
                };
                let path = self.workdir.join(text.trim());
                editor.save(&path).map_err(|e| e.to_string())?;
                self.say(format!("saved {}", path.display()));
                Ok(())
            }
        }
    }

    // ---------------------------------------------------------------- runs

    fn runs_key(&mut self, key: KeyEvent) {
        if self.runs.filtering {
            match key.code {
                KeyCode::Enter | KeyCode::Esc => self.runs.filtering = false,
                other => {
                    edit_text(&mut self.runs.filter, other, key.modifiers);
                    self.runs.selected = 0;
                }
            }
            return;
        }
        let n = self.runs.visible().len();
        match key.code {
            KeyCode::Down | KeyCode::Char('j') => {
                self.runs.selected = (self.runs.selected + 1).min(n.saturating_sub(1))
            }
            KeyCode::Up | KeyCode::Char('k') => {
                self.runs.selected = self.runs.selected.saturating_sub(1)
            }
            KeyCode::Home | KeyCode::Char('g') => self.runs.selected = 0,
            KeyCode::End | KeyCode::Char('G') => self.runs.selected = n.saturating_sub(1),
            KeyCode::Char('/') => {
                self.runs.filter.clear();
                self.runs.filtering = true;
            }
            KeyCode::Esc => {
                self.runs.filter.clear();
            }
            KeyCode::Char(' ') => {
                if let Some(id) = self.runs.current().map(|r| r.id.clone()) {
                    if !self.runs.marked.remove(&id) {
                        self.runs.marked.insert(id);
                    }
                    self.runs.selected = (self.runs.selected + 1).min(n.saturating_sub(1));
                }
            }
            KeyCode::Enter | KeyCode::Char('l') | KeyCode::Right => {
                if n == 0 {
                    self.open_demo();
                } else if let Some(id) = self.runs.current().map(|r| r.id.clone()) {
                    self.open_dashboard(&id);
                }
            }
            KeyCode::Char('n') => self.open_picker(),
            KeyCode::Char('e') => {
                if let Some(id) = self.runs.current().map(|r| r.id.clone()) {
                    self.edit_run_config(&id);
                }
            }
            KeyCode::Char('r') => {
                if let Some(r) = self.runs.current().cloned() {
                    self.resume_run(&r);
                }
            }
            KeyCode::Char('d') | KeyCode::Delete => {
                if let Some(r) = self.runs.current() {
                    if r.status == RunStatus::Running {
                        self.fail("the run is training: stop it before deleting it");
                    } else {
                        self.modal = Some(Modal::Confirm {
                            message: format!(
                                "Delete run {} and all its checkpoints? This cannot be undone.",
                                r.id
                            ),
                            action: Confirmed::DeleteRun(r.id.clone()),
                        });
                    }
                }
            }
            KeyCode::Char('c') => self.open_compare(),
            KeyCode::F(5) | KeyCode::Char('R') => {
                self.refresh_runs();
                self.say("run list re-read");
            }
            _ => {}
        }
    }

    /// The demo experiment, offered on a first launch.
    pub fn open_demo(&mut self) {
        self.open_editor_from(
            "demo-pretrain",
            &PickSource::Builtin("demo-pretrain".into()),
        );
    }

    fn open_picker(&mut self) {
        let mut items: Vec<(String, PickSource)> = Vec::new();
        let names = config::BUILTIN_EXPERIMENTS
            .iter()
            .map(|(n, _)| *n)
            .chain(config::builtin_preset_names());
        for name in names {
            items.push((
                format!("{name} (built in)"),
                PickSource::Builtin(name.into()),
            ));
        }
        let dir = self.workdir.join("configs");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let mut files: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            files.sort();
            for f in files {
                items.push((format!("configs/{}", file_name(&f)), PickSource::File(f)));
            }
        }
        self.modal = Some(Modal::Picker { items, selected: 0 });
    }

    fn open_editor_from(&mut self, label: &str, source: &PickSource) {
        let loaded = match source {
            PickSource::Builtin(name) => builtin_experiment(name, &self.workdir),
            PickSource::File(path) => config::load(path).map(|e| (e, path.clone())),
        };
        match loaded.and_then(|(exp, path)| EditorState::new(label, &exp, &path)) {
            Ok(editor) => {
                self.editor = Some(editor);
                self.screen = Screen::Editor;
            }
            Err(e) => self.fail(e.to_string()),
        }
    }

    fn edit_run_config(&mut self, id: &str) {
        let result = self.store.open(id).and_then(|run| {
            let text = run.read_config()?;
            let exp = Experiment::from_toml_str::<&str>(&text, &run.config_path(), &[])?;
            EditorState::new(format!("run {id}"), &exp, &run.config_path())
        });
        match result {
            Ok(editor) => {
                self.editor = Some(editor);
                self.screen = Screen::Editor;
            }
            Err(e) => self.fail(e.to_string()),
        }
    }

    fn resume_run(&mut self, r: &RunSummary) {
        if !matches!(r.status, RunStatus::Stopped | RunStatus::Crashed) {
            self.fail(format!(
                "run {} is {}: only a stopped or crashed run resumes",
                r.id, r.status
            ));
            return;
        }
        match train::resume(&self.store, &r.id, &[] as &[String], None) {
            Ok(handle) => self.watch_live(handle),
            Err(e) => self.fail(e.to_string()),
        }
    }

    /// Shows a worker just started on the dashboard.
    pub fn watch_live(&mut self, handle: TrainHandle) {
        let id = handle.run_id.clone();
        if self.stop_on_signal {
            // SIGTERM or a closed terminal stops it with a checkpoint even
            // if the UI cannot react.
            crate::signals::stop_on_signal(handle.controls());
        }
        let mut history = RunHistory::new(&id);
        // A resumed run's dashboard starts with its past.
        if let Ok(read) = crate::runs::read_events(&handle.run_dir.join("events.jsonl")) {
            for e in &read.events {
                history.apply(e);
            }
        }
        self.live.retain(|l| l.handle.run_id != id);
        self.live.push(LiveRun {
            handle,
            history,
            ended: false,
        });
        self.viewing = Some(id);
        self.viewed = None;
        self.screen = Screen::Dashboard;
    }

    fn open_dashboard(&mut self, id: &str) {
        self.viewing = Some(id.to_string());
        self.screen = Screen::Dashboard;
        if self.live_run(id).is_some() {
            self.viewed = None;
            return;
        }
        let run = match self.store.open(id) {
            Ok(r) => r,
            Err(e) => {
                self.fail(e.to_string());
                return;
            }
        };
        let mut tail = LogTail {
            path: run.events_path(),
            offset: 0,
        };
        let history = RunHistory::from_events(id, &tail.read_new());
        self.viewed = Some(ViewedRun {
            history,
            tail,
            name: run.name(),
            locked: run.is_locked(),
            run,
        });
    }

    fn open_compare(&mut self) {
        let mut ids: Vec<String> = self.runs.marked.iter().cloned().collect();
        if ids.len() < 2 {
            self.fail("mark two or more runs with Space, then press c to compare them");
            return;
        }
        // Newest first, as listed.
        let order: Vec<String> = self.runs.all.iter().map(|r| r.id.clone()).collect();
        ids.sort_by_key(|id| order.iter().position(|o| o == id).unwrap_or(usize::MAX));
        let mut runs = Vec::new();
        let mut configs = Vec::new();
        for id in &ids {
            let Ok(run) = self.store.open(id) else {
                continue;
            };
            let events = crate::runs::read_events(&run.events_path())
                .map(|r| r.events)
                .unwrap_or_default();
            let name = run.name();
            configs.push(run.read_config().unwrap_or_default());
            runs.push(CompareRun {
                id: id.clone(),
                name,
                status: run.status().as_str().to_string(),
                history: RunHistory::from_events(id, &events),
            });
        }
        // Runs of one config share a name: the id tells them apart.
        let names: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
        let suffix = |id: &str| {
            id.get(16..)
                .filter(|s| !s.is_empty())
                .unwrap_or(id)
                .to_string()
        };
        let suffixes: Vec<String> = runs.iter().map(|r| suffix(&r.id)).collect();
        for r in &mut runs {
            if names.iter().filter(|n| **n == r.name).count() > 1 {
                let s = suffix(&r.id);
                r.name = if suffixes.iter().filter(|x| **x == s).count() > 1 {
                    r.id.clone()
                } else {
                    s
                };
            }
        }
        self.compare = Some(CompareState {
            differing: differing_keys(&configs),
            runs,
            axis: XAxis::Step,
            log_y: false,
            smoothing: 0.0,
            validation: false,
        });
        self.screen = Screen::Compare;
    }

    // -------------------------------------------------------------- editor

    fn editor_key(&mut self, key: KeyEvent) {
        let Some(ed) = self.editor.as_mut() else {
            self.screen = Screen::Runs;
            return;
        };
        if ed.entry.is_some() {
            match key.code {
                KeyCode::Enter => ed.commit_entry(),
                KeyCode::Esc => ed.cancel_entry(),
                other => {
                    if let Some(buf) = ed.entry.as_mut() {
                        edit_text(buf, other, key.modifiers);
                    }
                    ed.check_entry();
                }
            }
            return;
        }
        if ed.filtering {
            match key.code {
                KeyCode::Enter | KeyCode::Esc => ed.filtering = false,
                other => {
                    edit_text(&mut ed.filter, other, key.modifiers);
                    ed.fix_selection();
                }
            }
            return;
        }
        match key.code {
            KeyCode::Down | KeyCode::Char('j') => ed.move_by(1),
            KeyCode::Up | KeyCode::Char('k') => ed.move_by(-1),
            KeyCode::PageDown => ed.move_by(10),
            KeyCode::PageUp => ed.move_by(-10),
            KeyCode::Tab => {
                // To the first field of the next section.
                let section = ed.fields[ed.selected].section.clone();
                let visible = ed.visible();
                if let Some(&i) = visible
                    .iter()
                    .find(|&&i| i > ed.selected && ed.fields[i].section != section)
                {
                    ed.selected = i;
                }
            }
            KeyCode::Enter | KeyCode::Char('i') => ed.begin_entry(),
            KeyCode::Char('/') => {
                // A new search, as in less and vim.
                ed.filter.clear();
                ed.filtering = true;
            }
            KeyCode::Char('u') | KeyCode::Delete => ed.reset_selected(),
            KeyCode::Esc => {
                if !ed.filter.is_empty() {
                    ed.filter.clear();
                } else {
                    self.screen = Screen::Runs;
                    self.refresh_runs();
                }
            }
            KeyCode::Char('w') => {
                let name = ed
                    .build()
                    .map(|e| e.name)
                    .unwrap_or_else(|_| "experiment".into());
                self.modal = Some(Modal::Input {
                    prompt: "Save the config as (relative to the current folder):".into(),
                    buffer: format!("configs/{name}.toml"),
                    purpose: InputPurpose::SavePath,
                    error: None,
                });
            }
            KeyCode::Char('s') | KeyCode::F(5) => self.start_from_editor(),
            _ => {}
        }
    }

    fn start_from_editor(&mut self) {
        let Some(ed) = &self.editor else {
            return;
        };
        if ed.has_errors() {
            self.fail("fix the fields marked invalid before starting the run");
            return;
        }
        let started = ed.build().and_then(|exp| {
            let toml = exp.to_toml()?;
            train::start(&self.store, exp, &toml)
        });
        match started {
            Ok(handle) => {
                self.say(format!("started run {}", handle.run_id));
                self.watch_live(handle);
            }
            Err(e) => self.fail(e.to_string()),
        }
    }

    // ----------------------------------------------------------- dashboard

    fn dashboard_key(&mut self, key: KeyEvent) {
        let Some(id) = self.viewing.clone() else {
            self.screen = Screen::Runs;
            return;
        };
        match key.code {
            KeyCode::Esc | KeyCode::Char('h') | KeyCode::Left | KeyCode::Backspace => {
                self.screen = Screen::Runs;
                self.refresh_runs();
                return;
            }
            KeyCode::Tab => {
                self.show_log = !self.show_log;
                return;
            }
            _ => {}
        }
        let live = self.live_run(&id).filter(|l| !l.ended);
        let Some(live) = live else {
            if matches!(
                key.code,
                KeyCode::Char('+' | '=' | '-' | 'L' | 'p' | 's' | 'c' | 'x')
            ) {
                self.fail(
                    "this run is not training in this window: resume it from the run list (r)",
                );
            }
            return;
        };
        let send = |c: Control| live.handle.send(c);
        match key.code {
            KeyCode::Char('+') | KeyCode::Char('=') => {
                send(Control::ScaleLr { factor: LR_STEP });
                self.say(format!("learning rate x{LR_STEP} at the next step"));
            }
            KeyCode::Char('-') => {
                send(Control::ScaleLr {
                    factor: 1.0 / LR_STEP,
                });
                self.say(format!("learning rate /{LR_STEP} at the next step"));
            }
            KeyCode::Char('L') => {
                let current = live
                    .history
                    .lr
                    .map(|lr| format!("{lr:e}"))
                    .unwrap_or_default();
                self.modal = Some(Modal::Input {
                    prompt: "Learning rate from the next step (e.g. 3e-4):".into(),
                    buffer: current,
                    purpose: InputPurpose::SetLr(id),
                    error: None,
                });
            }
            KeyCode::Char('p') => {
                if matches!(live.history.phase, super::history::Phase::Paused(_)) {
                    send(Control::Resume);
                    self.say("resuming");
                } else {
                    send(Control::Pause);
                    self.say("pausing after this step");
                }
            }
            KeyCode::Char('s') => {
                send(Control::SampleNow);
                self.say("decoding samples after this step");
            }
            KeyCode::Char('c') => {
                send(Control::CheckpointNow);
                self.say("checkpoint after this step");
            }
            KeyCode::Char('x') => {
                self.modal = Some(Modal::Confirm {
                    message: format!(
                        "Stop run {id}? It finishes its step, writes a checkpoint and can be resumed."
                    ),
                    action: Confirmed::StopRun(id),
                });
            }
            _ => {}
        }
    }

    // ------------------------------------------------------------- compare

    fn compare_key(&mut self, key: KeyEvent) {
        let Some(c) = self.compare.as_mut() else {
            self.screen = Screen::Runs;
            return;
        };
        match key.code {
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Char('h') | KeyCode::Left => {
                self.screen = Screen::Runs;
            }
            KeyCode::Tab => self.compare_pane = (self.compare_pane + 1) % 3,
            KeyCode::Char('x') => c.axis = c.axis.next(),
            KeyCode::Char('l') => c.log_y = !c.log_y,
            KeyCode::Char('v') => c.validation = !c.validation,
            KeyCode::Char(']') => c.smoothing = ((c.smoothing + 0.1) * 10.0).round() / 10.0,
            KeyCode::Char('[') => c.smoothing = ((c.smoothing - 0.1) * 10.0).round() / 10.0,
            _ => {}
        }
        if let Some(c) = self.compare.as_mut() {
            c.smoothing = c.smoothing.clamp(0.0, 0.9);
        }
    }
}

/// A built-in demo or model preset as an experiment, looked up from `workdir`.
fn builtin_experiment(name: &str, workdir: &Path) -> crate::Result<(Experiment, PathBuf)> {
    let path = workdir.join(format!("{name}.toml"));
    let exp = match config::builtin_experiment(name) {
        Some(text) => config::parse_str(text, &path)?,
        None => Experiment::from_preset::<&str>(name, Some(workdir), &[])?,
    };
    Ok((exp, path))
}

/// Resident memory of this process, where the platform tells it.
fn resident_memory() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One key into a line of text: characters, Backspace, Ctrl-U (clear),
/// Ctrl-W (delete a word).
pub fn edit_text(buf: &mut String, code: KeyCode, mods: KeyModifiers) {
    match code {
        KeyCode::Char('u') if mods.contains(KeyModifiers::CONTROL) => buf.clear(),
        KeyCode::Char('w') if mods.contains(KeyModifiers::CONTROL) => {
            let trimmed = buf.trim_end().len();
            buf.truncate(trimmed);
            let cut = buf.rfind(' ').map_or(0, |i| i + 1);
            buf.truncate(cut);
        }
        KeyCode::Char(c) if !mods.contains(KeyModifiers::CONTROL) => buf.push(c),
        KeyCode::Backspace => {
            buf.pop();
        }
        _ => {}
    }
}

/// The keys whose values differ between runs' configs (name and
/// description aside), with each run's value.
pub fn differing_keys(configs: &[String]) -> Vec<(String, Vec<String>)> {
    let flat: Vec<Vec<(String, String)>> = configs
        .iter()
        .map(|text| {
            let table: toml::Table = toml::from_str(text).unwrap_or_default();
            let mut rows = Vec::new();
            flatten_table(&table, "", &mut rows);
            rows
        })
        .collect();
    let mut keys: Vec<String> = flat.iter().flatten().map(|(k, _)| k.clone()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| k != "name" && k != "description")
        .filter_map(|k| {
            let values: Vec<String> = flat
                .iter()
                .map(|rows| {
                    rows.iter()
                        .find(|(rk, _)| *rk == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_else(|| "-".into())
                })
                .collect();
            values
                .iter()
                .any(|v| *v != values[0])
                .then_some((k, values))
        })
        .collect()
}

fn flatten_table(table: &toml::Table, prefix: &str, rows: &mut Vec<(String, String)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten_table(t, &key, rows),
            toml::Value::String(s) => rows.push((key, s.clone())),
            other => rows.push((key, other.to_string())),
        }
    }
}
