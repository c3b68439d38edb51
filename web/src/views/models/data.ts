// The model control panel's reads: a small loading hook and the paged list calls it makes
// (registry, the tenant's profiles, the scoring job's scores and recommendations).
import { useCallback, useEffect, useState } from "react";
import type { ModelProfile } from "../../gen/skm/profiles/v1/model_profile_pb.js";
import type { Model } from "../../gen/skm/profiles/v1/model_pb.js";
import type { ModelRecommendation, ModelScore } from "../../gen/skm/profiles/v1/model_score_pb.js";
import { api } from "../../lib/api";
import { allPages } from "../../lib/pages";

export interface Loaded<T> {
  data: T | undefined;
  error: unknown;
  loading: boolean;
  reload(): void;
}

/**
 * Runs `load` when `deps` change or on reload(). A failed load drops the old data, so that
 * numbers are never shown as current after the platform refused to give them again.
 */
export function useLoad<T>(load: (signal: AbortSignal) => Promise<T>, deps: readonly unknown[]): Loaded<T> {
  const [state, setState] = useState<{ data: T | undefined; error: unknown; loading: boolean }>({
    data: undefined,
    error: null,
    loading: true,
  });
  const [tick, setTick] = useState(0);
  useEffect(() => {
    const controller = new AbortController();
    setState((s) => ({ ...s, error: null, loading: true }));
    load(controller.signal).then(
      (data) => {
        if (!controller.signal.aborted) setState({ data, error: null, loading: false });
      },
      (error: unknown) => {
        if (!controller.signal.aborted) setState({ data: undefined, error, loading: false });
      },
    );
    return () => controller.abort();
    // `load` is a fresh closure each render; `deps` says when its inputs changed.
  }, [...deps, tick]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { ...state, reload };
}

export function listModels(signal: AbortSignal): Promise<Model[]> {
  return allPages(async (pageToken) => {
    const reply = await api.models.listModels({ pageSize: 1000, pageToken }, { signal });
    return { items: reply.models, next: reply.nextPageToken };
  });
}

export function listProfiles(parent: string, signal: AbortSignal): Promise<ModelProfile[]> {
  return allPages(async (pageToken) => {
    const reply = await api.modelProfiles.listModelProfiles({ parent, pageSize: 1000, pageToken }, { signal });
    return { items: reply.modelProfiles, next: reply.nextPageToken };
  });
}

export function listRecommendations(parent: string, signal: AbortSignal): Promise<ModelRecommendation[]> {
  return allPages(async (pageToken) => {
    const reply = await api.models.listModelRecommendations({ parent, pageSize: 1000, pageToken }, { signal });
    return { items: reply.modelRecommendations, next: reply.nextPageToken };
  });
}

export function listScores(parent: string, signal: AbortSignal): Promise<ModelScore[]> {
  return allPages(async (pageToken) => {
    const reply = await api.models.listModelScores({ parent, pageSize: 1000, pageToken }, { signal });
    return { items: reply.modelScores, next: reply.nextPageToken };
  });
}
