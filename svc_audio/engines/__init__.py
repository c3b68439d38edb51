"""svc_audio's speech engines: the real implementations of `svc_audio.ports`' SpeechDetector
(Silero VAD), Recognizer (faster-whisper) and Synthesizer (piper, espeak-ng).

Every engine is synchronous and CPU-bound (or GPU-bound where one is present): a call blocks
until its model has run. The core never calls them on the event loop; it runs them in threads
(`svc_audio.core.engines`), which works because onnxruntime, CTranslate2 and the espeak-ng
child process all release the GIL while they compute. Each engine turns its library's failures
into the domain's RecognizerUnavailable or SynthesizerUnavailable, so nothing above this package
sees a library exception.
"""
