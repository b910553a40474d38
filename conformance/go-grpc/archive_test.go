// Archived export jobs from Go: a job with archive_uri and verify run to SUCCEEDED, its files,
// its manifest and VerifyExportJob; and the archive refusals read with status.FromError(err).Details().
package conformance

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	pb "github.com/stream-export/stream-export/gen/go/streamexport/v1"
	"google.golang.org/grpc/codes"
)

var sha256Pattern = regexp.MustCompile(`^[0-9a-f]{64}$`)

func sha256Hex(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// archivedFile is the file:// archive's object `key` on disk (a key is its path without the first /).
func archivedFile(key string) string {
	return "/" + key
}

func TestArchivedExportJobWritesFilesAndAManifestThatVerifyChecks(t *testing.T) {
	folder := filepath.Join(archiveRoot, archiveAllowed, "jobs")
	var refs []*pb.ChannelRef
	for _, channel := range jobChannels {
		refs = append(refs, &pb.ChannelRef{Type: channel[0], Id: channel[1]})
	}
	request := &pb.CreateExportJobRequest{
		Selector:   &pb.CreateExportJobRequest_Channels{Channels: &pb.ChannelList{Channels: refs}},
		Version:    pb.ExportFormatVersion_EXPORT_FORMAT_VERSION_V2,
		ArchiveUri: fileURI(folder),
		Verify:     true,
	}
	job, err := client.CreateExportJob(ctx(t), request)
	must(t, err, "CreateExportJob with an archive")
	if job.GetRequest().GetArchiveUri() != request.GetArchiveUri() || !job.GetRequest().GetVerify() {
		t.Errorf("the job's request has archive_uri %q, verify %v; want %q, true",
			job.GetRequest().GetArchiveUri(), job.GetRequest().GetVerify(), request.GetArchiveUri())
	}
	events := watchJobToEnd(t, job.GetJobId())
	done := events[len(events)-1].GetJob()
	if done.GetState() != pb.ExportJobState_EXPORT_JOB_STATE_SUCCEEDED {
		t.Fatalf("last state %v, want SUCCEEDED: %v", done.GetState(), done)
	}
	if want := request.GetArchiveUri() + "/" + job.GetJobId() + "/manifest.json"; done.GetManifestUri() != want {
		t.Errorf("manifest_uri %q, want %q", done.GetManifestUri(), want)
	}
	shardCount := uint64((len(jobChannels) + jobShardSize - 1) / jobShardSize)

	// Every shard's file is in the archive, under the job's folder, as ListExportJobTasks says.
	shards := listJobShards(t, job.GetJobId())
	if uint64(len(shards)) != shardCount {
		t.Fatalf("%d shards, want %d", len(shards), shardCount)
	}
	keyPrefix := strings.TrimPrefix(filepath.Join(folder, job.GetJobId()), "/")
	var archivedBytes uint64
	for i, shard := range shards {
		archive := shard.GetArchive()
		if archive == nil {
			t.Fatalf("shard %d has no archive: %v", i, shard)
		}
		if want := fmt.Sprintf("%s/%05d-%s.jsonl", keyPrefix, shard.GetShard(), shard.GetTaskId()); archive.GetKey() != want {
			t.Errorf("shard %d: archive key %q, want %q", i, archive.GetKey(), want)
		}
		if !sha256Pattern.MatchString(archive.GetSha256()) {
			t.Errorf("shard %d: sha256 %q is not 64 lower-case hex digits", i, archive.GetSha256())
		}
		content, err := os.ReadFile(archivedFile(archive.GetKey()))
		must(t, err, "read an archived file")
		if len(content) == 0 || archive.GetBytes() != uint64(len(content)) || archive.GetSha256() != sha256Hex(content) {
			t.Errorf("shard %d: archive %v, the file has %d bytes with SHA-256 %s", i, archive, len(content), sha256Hex(content))
		}
		// The copy is Stream's file, byte for byte.
		task, err := client.GetTask(ctx(t), &pb.GetTaskRequest{TaskId: shard.GetTaskId()})
		must(t, err, "GetTask of a shard's task")
		if !reflect.DeepEqual(download(t, task.GetResult().GetUrl()), content) {
			t.Errorf("shard %d: the archived file differs from Stream's", i)
		}
		archivedBytes += archive.GetBytes()
	}
	progress := done.GetProgress()
	if progress.GetTasksTotal() != shardCount || progress.GetTasksArchived() != progress.GetTasksTotal() {
		t.Errorf("progress: %d of %d tasks archived, want %d of %d", progress.GetTasksArchived(), progress.GetTasksTotal(), shardCount, shardCount)
	}
	if archivedBytes == 0 || progress.GetBytesArchived() != archivedBytes {
		t.Errorf("progress: %d bytes archived, the shards' files hold %d", progress.GetBytesArchived(), archivedBytes)
	}

	// The manifest lists the same files; SHA256SUMS beside it, for `sha256sum -c`.
	manifestURI, err := url.Parse(done.GetManifestUri())
	must(t, err, "parse manifest_uri")
	data, err := os.ReadFile(manifestURI.Path)
	must(t, err, "read the manifest")
	type manifestFile struct {
		Key    string `json:"key"`
		Bytes  uint64 `json:"bytes"`
		Sha256 string `json:"sha256"`
	}
	var manifest struct {
		Format string `json:"format"`
		Job    struct {
			JobID string `json:"job_id"`
		} `json:"job"`
		Files []manifestFile `json:"files"`
	}
	must(t, json.Unmarshal(data, &manifest), "decode the manifest")
	if manifest.Format != "stream-export.manifest.v1" || manifest.Job.JobID != job.GetJobId() {
		t.Errorf("manifest format %q of job %q", manifest.Format, manifest.Job.JobID)
	}
	var wantFiles []manifestFile
	var wantSums []string
	for _, shard := range shards {
		archive := shard.GetArchive()
		wantFiles = append(wantFiles, manifestFile{archive.GetKey(), archive.GetBytes(), archive.GetSha256()})
		wantSums = append(wantSums, archive.GetSha256()+"  "+filepath.Base(archive.GetKey()))
	}
	if !reflect.DeepEqual(manifest.Files, wantFiles) {
		t.Errorf("the manifest lists %v, want the shards' archives %v", manifest.Files, wantFiles)
	}
	sums, err := os.ReadFile(filepath.Join(filepath.Dir(manifestURI.Path), "SHA256SUMS"))
	must(t, err, "read SHA256SUMS")
	if got := strings.Split(strings.TrimSuffix(string(sums), "\n"), "\n"); !reflect.DeepEqual(got, wantSums) {
		t.Errorf("SHA256SUMS %q, want %q", got, wantSums)
	}

	verified, err := client.VerifyExportJob(ctx(t), &pb.VerifyExportJobRequest{JobId: job.GetJobId()})
	must(t, err, "VerifyExportJob")
	if verified.GetManifestUri() != done.GetManifestUri() || verified.GetObjectsChecked() != shardCount ||
		verified.GetBytesChecked() != archivedBytes || len(verified.GetMismatches()) != 0 {
		t.Errorf("VerifyExportJob %v, want %d objects, %d bytes and no mismatch", verified, shardCount, archivedBytes)
	}

	// One byte of one archived file overwritten: Verify names that file, and only it.
	corrupted := shards[1].GetArchive()
	content, err := os.ReadFile(archivedFile(corrupted.GetKey()))
	must(t, err, "read the file to corrupt")
	content[len(content)/2] ^= 0x01
	must(t, os.WriteFile(archivedFile(corrupted.GetKey()), content, 0o644), "overwrite a byte")
	verified, err = client.VerifyExportJob(ctx(t), &pb.VerifyExportJobRequest{JobId: job.GetJobId()})
	must(t, err, "VerifyExportJob after the corruption")
	if verified.GetObjectsChecked() != shardCount {
		t.Errorf("VerifyExportJob checked %d objects, want %d", verified.GetObjectsChecked(), shardCount)
	}
	mismatches := verified.GetMismatches()
	if len(mismatches) != 1 {
		t.Fatalf("mismatches %v, want one for %s", mismatches, corrupted.GetKey())
	}
	m := mismatches[0]
	if m.GetKey() != corrupted.GetKey() || m.GetProblem() != pb.ArchiveMismatch_PROBLEM_SHA256 ||
		m.GetExpectedBytes() != corrupted.GetBytes() || m.GetActualBytes() != corrupted.GetBytes() ||
		m.GetExpectedSha256() != corrupted.GetSha256() || m.GetActualSha256() != sha256Hex(content) {
		t.Errorf("mismatch %v, want PROBLEM_SHA256 for %s (%d bytes, %s, now %s)",
			m, corrupted.GetKey(), corrupted.GetBytes(), corrupted.GetSha256(), sha256Hex(content))
	}
}

func TestArchiveRefusals(t *testing.T) {
	channels := &pb.CreateExportJobRequest_Channels{Channels: &pb.ChannelList{
		Channels: []*pb.ChannelRef{{Type: "messaging", Id: "general"}},
	}}

	// Outside the allowed prefix: PERMISSION_DENIED, the refused URI in the ErrorInfo.
	outside := fileURI(filepath.Join(archiveRoot, "outside"))
	_, err := client.CreateExportJob(ctx(t), &pb.CreateExportJobRequest{Selector: channels, ArchiveUri: outside})
	info, _ := errorDetails(t, err, codes.PermissionDenied, "ARCHIVE_NOT_ALLOWED")
	if got := info.GetMetadata()["archive_uri"]; got != outside {
		t.Errorf("ErrorInfo.metadata archive_uri %q, want %q", got, outside)
	}

	// A malformed URI, and `verify` without an archive: INVALID_ARGUMENT on that field.
	for field, request := range map[string]*pb.CreateExportJobRequest{
		"archive_uri": {Selector: channels, ArchiveUri: "s3://x/../y"},
		"verify":      {Selector: channels, Verify: true},
	} {
		_, err := client.CreateExportJob(ctx(t), request)
		_, badRequest := errorDetails(t, err, codes.InvalidArgument, "INVALID_REQUEST")
		if badRequest == nil {
			t.Fatalf("%s: no BadRequest detail", field)
		}
		var fields []string
		for _, violation := range badRequest.GetFieldViolations() {
			fields = append(fields, violation.GetField())
		}
		if !reflect.DeepEqual(fields, []string{field}) {
			t.Errorf("field violations %v, want one for %s", fields, field)
		}
	}

	// A job without an archive has nothing to verify.
	job, err := client.CreateExportJob(ctx(t), &pb.CreateExportJobRequest{Selector: channels})
	must(t, err, "CreateExportJob without an archive")
	_, err = client.VerifyExportJob(ctx(t), &pb.VerifyExportJobRequest{JobId: job.GetJobId()})
	errorDetails(t, err, codes.FailedPrecondition, "NOT_ARCHIVED")
}
